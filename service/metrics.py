"""Every Prometheus metric the service exports, declared in one place, on one registry per app."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

disable_created_metrics()  # *_created series double the scrape size and no panel uses them

# CPU inference of one image takes tens to hundreds of ms on 2 cores, a GPU batch ~2-30 ms:
# buckets span 2 ms .. 10 s so both sit in the resolved range.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 5.0, 10.0)
# Scores are reported relative to the model's threshold so one set of buckets fits every
# model: 1.0 is the decision boundary; good parts sit mostly at 0.5-1.
SCORE_RATIO_BUCKETS = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# While nothing drifts the smoothed online p-values are uniform: every bucket fills in proportion to its width.
P_VALUE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        PlatformCollector(registry=r)
        self.requests = Counter("sae_inspect_requests_total", "Inspection requests by model and outcome",
                                ["model", "outcome"], registry=r)
        self.latency = Histogram("sae_inspect_request_duration_seconds",
                                 "Latency of an inspection by stage (decode, queue, inference, total)",
                                 ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.score_ratio = Histogram("sae_inspect_image_score_ratio",
                                     "Image anomaly score divided by the model's threshold (1 = boundary)",
                                     ["model"], buckets=SCORE_RATIO_BUCKETS, registry=r)
        self.anomalies = Counter("sae_inspect_anomalies_total", "Images judged anomalous", ["model"], registry=r)
        self.images = Counter("sae_inspect_images_total", "Images inspected", ["model"], registry=r)
        self.batch_size = Histogram("sae_inspect_batch_size", "Images per inference micro-batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("sae_inspect_queue_depth", "Images waiting for inference", ["model"], registry=r)
        self.model_info = Gauge("sae_inspect_model_info", "Loaded model (value 1)",
                                ["model", "version", "backbone"], registry=r)
        self.threshold = Gauge("sae_inspect_threshold", "Image-score decision threshold", ["model"], registry=r)
        self.alpha = Gauge("sae_inspect_calibrated_alpha", "Calibrated false-alarm rate", ["model"], registry=r)
        self.alarm_rate_90 = Gauge("sae_inspect_false_alarm_rate_90", "False-alarm rate this model stays under with "
                                   "90 % confidence over its calibration draw", ["model"], registry=r)
        self.reloads = Counter("sae_inspect_model_reloads_total", "Model (re)loads by outcome",
                               ["model", "outcome"], registry=r)
        self.inflight = Gauge("sae_inspect_inflight_requests", "Requests being processed", registry=r)
        self.gpu_memory = Gauge("sae_inspect_gpu_memory_bytes", "GPU memory allocated by torch", registry=r)
        self.responses = Counter("sae_inspect_http_responses_total", "HTTP responses by status code (every route)",
                                 ["code"], registry=r)
        self.connections_cut = Counter("sae_inspect_connections_cut_total", "Connections closed by the server's "
                                       "guards (header_timeout, connection_cap)", ["reason"], registry=r)
        self.decode_pixels = Gauge("sae_inspect_decode_pixels", "Pixels being decoded now (bounded by "
                                   "SAE_INSPECT_MAX_DECODE_PIXELS)", registry=r)
        self.p_values = Histogram("sae_inspect_p_value", "Smoothed online conformal p-value of each inspected "
                                  "image (uniform while the process matches the calibration)", ["model"],
                                  buckets=P_VALUE_BUCKETS, registry=r)
        self.drift_evidence = Gauge("sae_inspect_drift_evidence", "log10 of the drift statistic on images "
                                    "with p > alpha (floored at 0; alarm at log10 SAE_INSPECT_DRIFT_THRESHOLD)",
                                    ["model"], registry=r)
        self.burst_evidence = Gauge("sae_inspect_burst_evidence", "log10 of the anomaly-burst statistic "
                                    "(floored at 0; alarm at log10 SAE_INSPECT_DRIFT_THRESHOLD)", ["model"],
                                    registry=r)
        self.drift_alarm_level = Gauge("sae_inspect_drift_alarm_level", "log10 of the drift and burst alarm "
                                       "threshold", registry=r)
        self.feedback = Counter("sae_inspect_feedback_total", "Operator labels filed, by label and the verdict "
                                "they answered (live precision: defect / all, among verdict=anomalous)",
                                ["model", "label", "verdict"], registry=r)
        self.feedback_ring = Counter("sae_inspect_feedback_ring_writes_total", "Uploads offered to the feedback "
                                     "ring by outcome (kept, dropped: queue full, failed: disk error)", ["outcome"],
                                     registry=r)
        self.ready = Gauge("sae_inspect_ready", "1 when models are loaded and warmed up", registry=r)
