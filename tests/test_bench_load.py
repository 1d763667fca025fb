"""The steady-state rate the cost benchmarks report leaves the ramp, the tail and failed replies out."""

from bench.load import Reply, steady_rate


def test_steady_rate_counts_ok_replies_inside_the_window_only():
    start = 100.0
    replies = [Reply(200, "v", 0.1, None, start + t) for t in (0.2, 1.5, 2.0, 2.5, 3.0, 4.5)]
    replies.append(Reply(503, None, 0.1, None, start + 2.2))  # refused: never counted
    # window 1.0 .. 3.0 s after start: the replies at 1.5, 2.0, 2.5 and 3.0 s
    assert steady_rate(replies, start, warm=1.0, window=2.0) == 4 / 2.0
    assert steady_rate(replies, start, warm=3.2, window=1.0) == 0.0  # 3.2 .. 4.2 s: none
