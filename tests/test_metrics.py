"""Metric sinks: JSON lines always, TensorBoard when tensorboardX exists, a progress line."""

import json
import sys

from t5jax.metrics import MetricsWriter


def test_jsonl_and_progress_without_tensorboardx(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if absent
  writer = MetricsWriter(str(tmp_path), total_steps=100)
  writer.write(50, {"loss": 2.5, "step_time": 2.0, "nan_metric": float("nan")})
  writer.close()
  rec = json.loads((tmp_path / "metrics.jsonl").read_text())
  assert rec["step"] == 50 and rec["loss"] == 2.5
  out = capsys.readouterr().out
  assert "tensorboardX not installed" in out
  assert "[50/100  50.0%] eta 0:01:40 loss=2.5" in out


def test_inactive_writer_writes_nothing(tmp_path):
  writer = MetricsWriter(str(tmp_path / "x"), total_steps=10, active=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not (tmp_path / "x").exists()
