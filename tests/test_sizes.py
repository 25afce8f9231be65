import json
import subprocess

import pytest

from llama_export.config import SIZES, ModelArgs, get_size

# Meta's published parameter counts (DESIGN.md), not derived from our code.
META_COUNTS = {
    "7b": 6_738_415_616,
    "13b": 13_015_864_320,
    "33b": 32_528_943_616,
    "65b": 65_285_660_672,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    "llama3.1-70b": 70_553_706_496,
    "llama3.1-405b": 405_853_388_800,
    "llama3.2-1b": 1_235_814_400,  # tied embeddings: the [vocab, dim] matrix counts once
    "llama3.2-3b": 3_212_749_824,
}


def test_sizes_json_gives_metas_exact_counts():
    out = subprocess.run(["llama-export", "sizes", "--json"], capture_output=True, text=True, check=True).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    for name, count in META_COUNTS.items():
        assert rows[name]["params"] == count, name
    for row in rows.values():
        assert {"name", "params", "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim"} <= set(row)
    assert rows["small"]["params"] == pytest.approx(124.7e6, rel=1e-3)


def test_sizes_table_lists_every_size():
    out = subprocess.run(["llama-export", "sizes"], capture_output=True, text=True, check=True).stdout
    for name in SIZES:
        assert name in out
    assert "6,738,415,616" in out


@pytest.mark.parametrize("name,hidden", [("7b", 11008), ("13b", 13824), ("65b", 22016), ("llama2-70b", 28672),
                                          ("llama3-8b", 14336), ("llama3.1-405b", 53248), ("llama3.2-1b", 8192),
                                          ("llama3.2-3b", 8192)])
def test_hidden_dim_follows_metas_formula(name, hidden):
    assert SIZES[name].hidden_dim == hidden


def test_model_args_reject_inconsistent_heads():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=3, vocab_size=10)


def test_family_qualified_names_are_accepted():
    assert get_size("llama-7b") == SIZES["7b"]
    assert get_size("LLaMA1-65B") == SIZES["65b"]
    with pytest.raises(KeyError, match="unknown size"):
        get_size("8b")
