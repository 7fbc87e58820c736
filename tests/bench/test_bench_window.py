"""bench/run.py: each Locust row is measured over its steady window, and says where the CPU went."""

from __future__ import annotations

from bench.run import PARTS, Load, Meter, cpu_table, steady


def a_meter(at: float, images: int, **cpu: float) -> Meter:
    return Meter(at, images, {part: cpu.get(part, 0.0) for part in PARTS})


def test_the_window_counts_only_what_happened_in_it() -> None:
    load = Load(1, "saturation", 100, True, seconds=60)
    # Before the window: sign-ins and the first batches (12 s of web CPU, 40 images) are not counted.
    first = a_meter(10.0, 40, web=12.0, workers=3.0, redis=0.5, locust=2.0)
    last = a_meter(70.0, 6040, web=42.0, workers=63.0, redis=2.9, locust=8.0, database=3.0)
    steady(load, first, last)
    assert load.window_s == 60.0 and load.rate == 100.0
    assert load.cpu_ms == {"web": 5.0, "workers": 10.0, "redis": 0.4, "database": 0.5, "locust": 1.0}
    assert load.web_ms == 5.0 and load.served == 100.0


def test_a_row_the_model_never_sees_keeps_locusts_count() -> None:
    load = Load(1, "saturation", 100, True, images="cached", seconds=60)
    load.endpoints["POST /api/predictions"] = {"rps": 250.0}
    steady(load, a_meter(10.0, 500, web=1.0), a_meter(70.0, 501, web=31.0))  # one more: another row's
    assert load.rate == 0.0 and load.cpu_ms == {} and load.served == 250.0


def test_the_table_adds_the_parts_up() -> None:
    load = Load(1, "saturation", 100, False, backend="openvino", seconds=60)
    steady(load, a_meter(0.0, 0), a_meter(10.0, 1000, web=5.0, workers=10.0, redis=0.5, locust=1.5, database=1.0))
    row = cpu_table([load, Load(1, "saturation", 100, True, images="cached")])[-1]
    # 18 ms per image at 100 images/s: 1.8 cores busy; the workers' 10 ms of 18 is the model's share.
    assert row == "| openvino | 1 | saturation | no | 100 | 5.0 | 10.0 | 0.5 | 1.0 | 1.5 | 18.0 | 1.80 | 56% |"
