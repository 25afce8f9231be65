"""TextStreamer: streamed deltas add up to the full text; stop strings cut it and are never emitted, even in part."""

from __future__ import annotations

from llama_export.triton.streaming import TextStreamer

PIECES = {1: "", 10: "Hello", 11: " wor", 12: "ld", 13: "!", 14: " END", 15: " more"}


def decode(ids):
    return "".join(PIECES[i] for i in ids)


def run(ids, stop=()):
    streamer = TextStreamer(decode, [1], stop)
    deltas = []
    for token in ids:
        deltas.append(streamer.push(token))
        if streamer.stopped:
            break
    deltas.append(streamer.finish())
    return deltas, streamer


def test_deltas_add_up_to_the_text():
    deltas, streamer = run([10, 11, 12, 13])
    assert "".join(deltas) == "Hello world!" == streamer.emitted and not streamer.stopped


def test_stop_string_cuts_and_is_never_emitted():
    deltas, streamer = run([10, 11, 12, 14, 15], stop=["END"])
    assert "".join(deltas) == "Hello world " and streamer.stopped
    assert streamer.ids == [10, 11, 12, 14]


def test_a_character_split_over_tokens_is_emitted_once_complete():
    emoji = "😀".encode()
    pieces = {1: b"", 20: b"Hi ", 21: emoji[:2], 22: emoji[2:], 23: b"!", 24: emoji[:1]}

    def decode_bytes(ids):  # as byte-level tokenizers decode: incomplete UTF-8 becomes U+FFFD
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    streamer = TextStreamer(decode_bytes, [1])
    deltas = [streamer.push(token) for token in (20, 21, 22, 23, 24)] + [streamer.finish()]
    assert deltas == ["Hi ", "", "😀", "!", "", "\ufffd"]  # an unfinished character is released at the end


def test_possible_stop_prefix_is_held_back_then_released():
    deltas, _ = run([10, 11, 12], stop=["world!"])
    assert deltas[:3] == ["Hello", " ", ""]  # "wor" / "world" could still become "world!"
    assert "".join(deltas) == "Hello world"  # generation ended without the stop string: released
