"""Drift and burst alarms on streams of scores: uniform online p-values, no alarm on a clean stream
(with defects at their usual rate), an alarm soon after a drift, a burst alarm of its own."""

import numpy as np
import pytest

from models.drift import EPSILONS, DriftConfig, DriftMonitor, Reference, power_bets


def _monitor(rng, n_cal=200, alpha=0.01, **cfg):
    return DriftMonitor(rng.normal(size=n_cal), alpha, DriftConfig(**cfg), seed=1)


def test_online_smoothed_p_values_are_uniform_on_an_exchangeable_stream():
    rng = np.random.default_rng(0)
    mon = _monitor(rng)
    p = np.array([mon.observe(s) for s in rng.normal(size=6000)])
    counts = np.histogram(p, bins=10, range=(0, 1))[0]
    assert counts.min() > 480 and counts.max() < 720, counts  # 600 expected per bin, ~4 sd either side
    assert 0 < p.min() and p.max() < 1


def test_bets_have_mean_one_under_the_uniform_law():
    log_q = np.linspace(np.log(1e-12), 0, 200_001)  # integrate f(q) q d(ln q); below 1e-12 q^e < 1e-3
    f_q = np.array([power_bets(q) for q in np.exp(log_q)]) * np.exp(log_q)[:, None]
    means = ((f_q[1:] + f_q[:-1]) / 2 * np.diff(log_q)[:, None]).sum(0)
    assert len(means) == len(EPSILONS) and np.allclose(means, 1, atol=2e-3), means


def test_no_alarm_over_a_clean_stream_with_defects_at_their_usual_rate():
    rng = np.random.default_rng(2)
    mon = _monitor(rng, usual_defect_rate=0.02)
    peak_drift = peak_burst = 0.0
    for _ in range(5000):
        defect = rng.random() < 0.02
        score = rng.normal() + (6.0 if defect else 0.0)
        mon.observe(score)
        peak_drift, peak_burst = max(peak_drift, mon.drift_evidence), max(peak_burst, mon.burst_evidence)
    assert not mon.drifting and not mon.bursting
    assert peak_drift < 6 and peak_burst < 6, (peak_drift, peak_burst)


@pytest.mark.parametrize("shift,within", [(1.0, 300), (2.0, 60)])
def test_drift_alarm_soon_after_a_shift(shift, within):
    rng = np.random.default_rng(3)
    mon = _monitor(rng)
    for s in rng.normal(size=2000):
        mon.observe(s)
    assert not mon.drifting
    for _ in range(within):
        s = rng.normal() + shift
        mon.observe(s)
        if mon.drifting:
            break
    assert mon.drifting, f"no alarm {within} images after a {shift} sd shift (evidence {mon.drift_evidence:.1f})"


def test_burst_alarm_on_a_run_of_anomalies_and_not_the_drift_alarm():
    rng = np.random.default_rng(4)
    mon = _monitor(rng, usual_defect_rate=0.01)
    for s in rng.normal(size=1000):
        mon.observe(s)
    for _ in range(400):  # a fifth of the parts now defective, good parts unchanged
        defect = rng.random() < 0.2
        s = rng.normal() + (6.0 if defect else 0.0)
        mon.observe(s)
        if mon.bursting:
            break
    assert mon.bursting
    assert not mon.drifting


def test_reference_counts_match_a_brute_force_count_across_merges():
    rng = np.random.default_rng(5)
    ref = Reference(rng.integers(0, 20, 50).astype(float), buffer=16)  # many merges
    allv = list(ref.sorted)
    for x in rng.integers(0, 20, 200).astype(float):
        a = np.asarray(allv)
        assert ref.counts(x) == (int((a > x).sum()), int((a == x).sum()))
        ref.add(x)
        allv.append(x)
    assert len(ref) == 250


def test_bad_settings_and_scores_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        DriftConfig(threshold=1.0)
    with pytest.raises(ValueError, match="defect rate"):
        DriftConfig(usual_defect_rate=1.0)
    with pytest.raises(ValueError, match="finite"):
        _monitor(np.random.default_rng(0)).observe(float("nan"))
    with pytest.raises(ValueError, match="calibration"):
        DriftMonitor(np.array([]), 0.01)


def test_on_generated_parts_a_clean_stream_stays_quiet_and_darker_lighting_raises_the_alarm(detector):
    """Real model scores: 300 new good parts raise no alarm; the same parts under 20 % less light (mostly
    still judged good) reach the alarm level within 200 images."""
    from models.synthetic import good_part

    rng = np.random.default_rng(21)
    parts = [good_part(rng) for _ in range(500)]
    clean = [detector.score_map(m) for m, _ in detector.maps(parts[:300])]
    darker = [detector.score_map(m) for m, _ in detector.maps([(p * 0.8).astype(np.uint8) for p in parts[300:]])]
    cal = detector.calibration
    mon = DriftMonitor(np.asarray(cal.scores), cal.alpha, DriftConfig(), seed=0)
    for s in clean:
        mon.observe(s)
    assert not mon.drifting and not mon.bursting, (mon.drift_evidence, mon.burst_evidence)
    seen = 0
    while seen < len(darker) and not (mon.drifting or mon.bursting):
        mon.observe(darker[seen])
        seen += 1
    print(f"after {seen} darker parts: drift evidence {mon.drift_evidence:.1f}, burst {mon.burst_evidence:.1f}")
    assert mon.drifting or mon.bursting
