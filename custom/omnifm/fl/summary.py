"""Server-side job summary: one line at the end of the job, the final evaluation in TensorBoard.

``GlobalModelEval`` collects every site's evaluation of the final global model into
``cross_site_val/cross_val_results.json`` but prints nothing a person reads, and without a
formatter it warns "No formatter provided" every time FLARE collects statistics (every 5 s in the
simulator). :class:`OmniFMJobSummary` is that formatter (``"formatter_id": "job_summary"`` on the
``final_evaluation`` workflow) and a listener:

- each site's final metrics, as they arrive, go to the job's analytics receiver (TensorBoard:
  ``tb_events/<site>/``, tags ``final_<metric>`` at step = number of rounds run, next to the
  site's per-round ``dice_global`` / ``dice_local`` curves);
- at the end of the run the server logs one line::

      job summary: final global model dice per site: site-1 0.233, site-2 0.430, site-3 0.193;
      mean 0.285 over 3 site(s); results: <run>/cross_site_val/cross_val_results.json;
      TensorBoard: tensorboard --logdir <run>/tb_events

  and writes the same as ``cross_site_val/omnifm_summary.json``. A site that replied with an
  error or sent nothing is named in the line (and left out of the mean).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from nvflare.apis.analytix import AnalyticsDataType, LogWriterName
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.utils.analytix_utils import create_analytic_dxo
from nvflare.app_common.abstract.formatter import Formatter
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

__all__ = ["FIGURES", "OmniFMJobSummary", "SUMMARY_FILE", "summary_text"]

SUMMARY_FILE = "omnifm_summary.json"
FIGURES = "omnifm_figures"  # a site's final-evaluation reply may carry {name: PNG bytes} in its DXO meta


class OmniFMJobSummary(Formatter):
    """Formatter of ``GlobalModelEval`` and end-of-job summary (see the module docstring).

    Args:
        metric: the per-site metric the line reports and averages (the executor's ``dice``: mean of
            the task's region Dice scores).
        analytics_receiver_id: the server's analytics receiver (FLARE's ``TBAnalyticsReceiver``);
            ``""`` or a missing component: the final evaluation is not streamed.
        results_dir: ``GlobalModelEval``'s ``cross_val_dir`` (where FLARE writes the results JSON).
    """

    def __init__(self, metric: str = "dice", analytics_receiver_id: str = "tb_receiver",
                 results_dir: str = AppConstants.CROSS_VAL_DIR) -> None:
        super().__init__()
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metric must be a non-empty string, got {metric!r}")
        self.metric = metric
        self.analytics_receiver_id = analytics_receiver_id
        self.results_dir = results_dir
        self.results: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}
        self.rounds = 0

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.results.clear()
            self.failures.clear()
            self.rounds = 0
        elif event_type == AppEventType.ROUND_STARTED:
            self.rounds = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0) or 0) + 1
        elif event_type == AppEventType.VALIDATION_RESULT_RECEIVED:
            self._receive(fl_ctx)
        elif event_type == EventType.END_RUN:
            self._finish(fl_ctx)

    def format(self, fl_ctx: FLContext) -> str:
        """The summary so far (FLARE's statistics collection, e.g. the admin console's ``show_stats``)."""
        return summary_text(self.results, self.failures, self.metric)

    def _receive(self, fl_ctx: FLContext) -> None:
        site = fl_ctx.get_prop(AppConstants.DATA_CLIENT, None) or "?"
        result = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT, None)
        if result is None:
            self.failures[site] = "sent no result"
            return
        rc = result.get_return_code(ReturnCode.OK)
        if rc != ReturnCode.OK:
            self.failures[site] = f"replied {rc}"
            return
        try:
            dxo = from_shareable(result)
        except ValueError:
            self.failures[site] = "sent a result that is not a DXO"
            return
        if dxo.data_kind != DataKind.METRICS or not isinstance(dxo.data, dict):
            self.failures[site] = f"sent {dxo.data_kind}, not metrics"
            return
        self.results[site] = dict(dxo.data)
        self.failures.pop(site, None)
        self._stream(site, dxo.data, fl_ctx)
        self._write_figures(site, dxo.get_meta_prop(FIGURES) or {}, fl_ctx)

    def _write_figures(self, site: str, figures: dict, fl_ctx: FLContext) -> None:
        """A site's pictures of the final model (``meta[FIGURES]``) as ``<results_dir>/<site>_<name>``."""
        if not isinstance(figures, dict):
            return
        out = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())) / self.results_dir
        for name, data in figures.items():
            if not (isinstance(name, str) and name.endswith(".png") and Path(name).name == name and isinstance(data, bytes)):
                self.log_warning(fl_ctx, f"{site} sent a figure {name!r} that is not a PNG file name with bytes: ignored")
                continue
            try:
                os.makedirs(out, exist_ok=True)
                (out / f"{site}_{name}").write_bytes(data)
            except OSError as err:
                self.log_warning(fl_ctx, f"{site}_{name} not written ({err.strerror or type(err).__name__})")
                continue
            self.log_info(fl_ctx, f"{site}: picture of the final model written to {out / f'{site}_{name}'}")

    def _stream(self, site: str, metrics: dict[str, Any], fl_ctx: FLContext) -> None:
        """Hand the site's final metrics to the analytics receiver, recorded under the site's name."""
        receiver = fl_ctx.get_engine().get_component(self.analytics_receiver_id) if self.analytics_receiver_id else None
        if receiver is None or not hasattr(receiver, "save"):
            return
        for key, value in metrics.items():
            if not _is_number(value):
                continue
            dxo = create_analytic_dxo(tag=f"final_{key}", value=float(value), data_type=AnalyticsDataType.SCALAR,
                                      writer=LogWriterName.TORCH_TB, global_step=self.rounds)
            try:
                receiver.save(fl_ctx, dxo.to_shareable(), site)
            except Exception as err:  # noqa: BLE001 - TensorBoard trouble must not fail the job's last step
                self.log_warning(fl_ctx, f"final evaluation of {site} not written to TensorBoard ({type(err).__name__}: {err})")
                return

    def _finish(self, fl_ctx: FLContext) -> None:
        run_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))
        results_file = run_dir / self.results_dir / "cross_val_results.json"
        receiver = fl_ctx.get_engine().get_component(self.analytics_receiver_id) if self.analytics_receiver_id else None
        tb_dir = getattr(receiver, "root_log_dir", None) or (run_dir / "tb_events" if receiver is not None else None)
        where = f"results: {results_file}"
        if tb_dir:
            where += f"; TensorBoard: tensorboard --logdir {tb_dir}"
        self.log_info(fl_ctx, f"job summary: {summary_text(self.results, self.failures, self.metric)}; {where}")
        summary = {
            "metric": self.metric, "rounds": self.rounds, "per_site": {s: self.results[s].get(self.metric)
                                                                      for s in sorted(self.results)},
            "mean": _mean(self.results, self.metric), "failed": dict(sorted(self.failures.items())),
            "results_file": str(results_file), "tensorboard": str(tb_dir) if tb_dir else None,
        }
        try:
            os.makedirs(run_dir / self.results_dir, exist_ok=True)
            (run_dir / self.results_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        except OSError as err:
            self.log_warning(fl_ctx, f"{SUMMARY_FILE} not written ({err.strerror or type(err).__name__})")


def summary_text(results: dict[str, dict[str, Any]], failures: dict[str, str], metric: str = "dice") -> str:
    """``final global model dice per site: site-1 0.233, site-2 0.430; mean 0.332 over 2 site(s)[; site-3: replied ...]``."""
    if not results and not failures:
        return "no site evaluated the final global model (did training save one? see the errors above)"
    parts = [f"{site} {_fmt(results[site].get(metric))}" for site in sorted(results)]
    mean = _mean(results, metric)
    text = f"final global model {metric} per site: {', '.join(parts) or 'none'}"
    text += f"; mean {_fmt(mean)} over {_count(results, metric)} site(s)" if mean is not None else f"; no {metric} to average"
    for site in sorted(failures):
        text += f"; {site}: {failures[site]} (not in the mean)"
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(results: dict[str, dict[str, Any]], metric: str) -> int:
    return sum(_is_number(r.get(metric)) and math.isfinite(r[metric]) for r in results.values())


def _mean(results: dict[str, dict[str, Any]], metric: str) -> float | None:
    values = [float(r[metric]) for r in results.values() if _is_number(r.get(metric)) and math.isfinite(r[metric])]
    return sum(values) / len(values) if values else None


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if _is_number(value) else "n/a"
