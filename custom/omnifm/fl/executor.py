"""Client executor: trains site-locally and returns shared weights + spectral aggregates."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from omnifm.algorithms import check_run_spec, get_algorithm
from omnifm.data.site import SiteData, find_site_config, load_site_data, simulator_config
from omnifm.engine import SiteTrainer, TrainConfig, predict_case
from omnifm.engine.site import EVAL_SEED, previous_personal_path, saved_round
from omnifm.engine.privacy import DPBudgetExhausted
from omnifm.fl import wire
from omnifm.fl.summary import FIGURES
from omnifm.knowledge import KnowledgeBank
from omnifm.tasks import get_task


class OmniFMExecutor(Executor):
    """Runs one round of local training per ``train`` task; evaluates a global model per ``validate`` task.

    The algorithm, model and its hyper-parameters come from the server with every task (the run
    spec); the arguments here are the site's own training settings. The round itself is
    :meth:`SiteTrainer.train_round` (the same code the in-process benchmark runs). The personal
    state (personal parameters, buffers, Ditto's personal model, SCAFFOLD's control) is saved in
    the site's workspace after every round and restored when the executor is rebuilt.

    Args:
        local_epochs: epochs per round.
        batch_size: slices per step.
        learning_rate: Adam learning rate of round 0.
        lr_schedule: ``cosine`` (decay over the job's rounds) or ``constant``.
        min_lr_fraction: the cosine schedule's floor as a fraction of ``learning_rate``.
        keep_empty_fraction: fraction of tumour-free training slices kept.
        min_prototype_count: smallest spectral-token cluster uploaded as a prototype.
        log_every: log the running loss every N steps (0: per epoch only).
        seed: data order and split seed.
        phantom_cases: cases of the built-in phantom a *simulated* site uses when it has no
            ``local/omnifm_site.json`` (outside the simulator such a site stops with an error).
        phantom_shape: that phantom's volume size (H, W, D).
        phantom_modalities: the modalities that phantom renders, by site name (e.g.
            ``{"site-1": ["ct", "t1ce"], "site-2": ["t1ce"]}``; several give paired cases of one
            anatomy); a site not listed renders one modality by its index (``modality_for_site``).
        val_fraction: that phantom's validation share (a site config sets its own).
        train_task_name: the training task.
        validate_task_name: the task that evaluates a global model (final evaluation).
        analytic_sender_id: id of the client's TBWriter/AnalyticsSender component ("" to disable).
        dp: case-level DP-SGD settings (``target_epsilon`` | ``noise_multiplier``, ``max_grad_norm``,
            ``delta``, ...; see :class:`omnifm.engine.privacy.DPConfig` and docs/PRIVACY.md); null: no DP.
            A site whose budget is spent replies ``EARLY_TERMINATION`` (the round goes on with the others).
    """

    def __init__(
        self,
        local_epochs: int = 2,
        batch_size: int = 16,
        learning_rate: float = 1e-3,
        lr_schedule: str = "cosine",
        min_lr_fraction: float = 0.05,
        keep_empty_fraction: float = 0.3,
        min_prototype_count: int = 8,
        log_every: int = 0,
        seed: int = 0,
        phantom_cases: int = 20,
        phantom_shape: list[int] | None = None,
        phantom_modalities: dict[str, list[str]] | None = None,
        val_fraction: float = 0.25,
        train_task_name: str = AppConstants.TASK_TRAIN,
        validate_task_name: str = AppConstants.TASK_VALIDATION,
        analytic_sender_id: str = "analytic_sender",
        dp: dict | None = None,
    ) -> None:
        super().__init__()
        self.train_config = TrainConfig(
            local_epochs=local_epochs, batch_size=batch_size, learning_rate=learning_rate, lr_schedule=lr_schedule,
            min_lr_fraction=min_lr_fraction, keep_empty_fraction=keep_empty_fraction,
            min_prototype_count=min_prototype_count, log_every=log_every, seed=seed, dp=dp,
        )
        self.phantom_cases = phantom_cases
        self.phantom_shape = tuple(phantom_shape or (64, 64, 24))
        self.phantom_modalities = _site_modalities(phantom_modalities)
        self.val_fraction = val_fraction
        self.train_task_name = train_task_name
        self.validate_task_name = validate_task_name
        self.analytic_sender_id = analytic_sender_id
        self._trainer: SiteTrainer | None = None
        self._writer = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN and self.analytic_sender_id:
            self._writer = fl_ctx.get_engine().get_component(self.analytic_sender_id)
            if self._writer is None:
                self.log_warning(fl_ctx, f"no component '{self.analytic_sender_id}': metrics are not streamed")

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name not in (self.train_task_name, self.validate_task_name):
            self.log_error(fl_ctx, f"unknown task '{task_name}'; this executor handles {self.train_task_name}, "
                           f"{self.validate_task_name}")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        try:
            dxo = from_shareable(shareable)
            spec = check_run_spec(dxo.get_meta_prop(wire.SPEC))
            _check_federated(spec)
            start = shareable.get_header(AppConstants.CURRENT_ROUND) if task_name == self.train_task_name else None
            trainer = self._get_trainer(spec, fl_ctx, start)
            trainer.load_global(wire.to_torch(dxo.data))
        except ValueError as err:
            self.log_error(fl_ctx, f"cannot run '{task_name}': {err}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        bank_state = dxo.get_meta_prop(wire.BANK)
        bank = KnowledgeBank.from_plain(bank_state) if bank_state else None
        if task_name == self.validate_task_name:
            return self._validate(trainer, bank, fl_ctx)
        state = dxo.get_meta_prop(wire.STATE) or {}
        current = int(shareable.get_header(AppConstants.CURRENT_ROUND) or 0)
        num_rounds = shareable.get_header(AppConstants.NUM_ROUNDS)
        return self._run_round(trainer, bank, state, (current, num_rounds), fl_ctx, abort_signal)

    def _validate(self, trainer: SiteTrainer, bank: KnowledgeBank | None, fl_ctx: FLContext) -> Shareable:
        split = "test" if trainer.test_volumes else "val"  # the test split, where the site has one, is only used here
        scores = trainer.evaluate(bank, split=split)
        if trainer.dp is not None:  # the final epsilon goes into cross_val_results.json
            scores.update(trainer.dp.metrics())
        self.log_info(fl_ctx, f"{fl_ctx.get_identity_name()}: final global model on the {split} split: {trainer.task.describe(scores)}")
        figures = self._figures(trainer, bank, split, fl_ctx)
        return DXO(data_kind=DataKind.METRICS, data=scores, meta={FIGURES: figures} if figures else None).to_shareable()

    def _figures(self, trainer: SiteTrainer, bank: KnowledgeBank | None, split: str, fl_ctx: FLContext) -> dict:
        """``{name: PNG bytes}`` of a task that draws its final model (:meth:`omnifm.tasks.Task.figure`; most do not).

        The server's job summary writes them next to the results (``cross_site_val/<site>_<name>``).
        A failing picture is a warning, never a failed evaluation.
        """
        figure = trainer.task.figure
        site = fl_ctx.get_identity_name()
        model = trainer.personal_model if trainer.personal_model is not None else trainer.model
        retriever = trainer._retriever(bank, seed=EVAL_SEED)  # the one trainer.evaluate scores with
        volumes = trainer.test_volumes if split == "test" else trainer.val_volumes
        try:
            png = figure(volumes, lambda case: predict_case(model, case, trainer.device, retriever, trainer.task),
                         f"{site}: final global model, {split} split")
        except Exception as err:  # noqa: BLE001 - a picture must not fail the job's last step
            self.log_warning(fl_ctx, f"{site}: no {trainer.task.name} picture ({type(err).__name__}: {err})")
            return {}
        return {f"{trainer.task.name}_{split}.png": png} if png else {}

    def _run_round(
        self,
        trainer: SiteTrainer,
        bank: KnowledgeBank | None,
        state: dict,
        rounds: tuple[int, int | None],
        fl_ctx: FLContext,
        abort_signal: Signal,
    ) -> Shareable:
        """One ``train`` task; ``rounds`` = (current round, the job's number of rounds or None)."""
        site = fl_ctx.get_identity_name()
        current, num_rounds = rounds
        before = trainer.evaluate(bank)
        self.log_info(fl_ctx, f"round {current}: training on {site} (bank size {0 if bank is None else len(bank)})")
        try:
            result = trainer.train_round(bank, current, state, int(num_rounds) if num_rounds else None)
        except DPBudgetExhausted as err:  # a refusal, not a failure: the others go on (quorum permitting)
            self.log_warning(fl_ctx, f"round {current} {site}: {err}; replying {ReturnCode.EARLY_TERMINATION}")
            return make_reply(ReturnCode.EARLY_TERMINATION)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        after = trainer.evaluate(bank)
        trainer.save_personal(self._personal_path(trainer.spec, fl_ctx), current)
        metrics = trainer.task.metric_names(before)
        result.metrics.update({f"{k}_global": before[k] for k in metrics})
        result.metrics.update({f"{k}_local": after[k] for k in metrics})
        self.log_info(
            fl_ctx,
            f"round {current} {site}: received model {trainer.task.describe(before)}; after local training "
            f"{trainer.task.describe(after)}; loss {result.metrics.get('loss', float('nan')):.4f}",
        )
        if result.diagnostics:
            shown = " ".join(f"{k}={v:.4f}" for k, v in result.diagnostics.items())
            label = "OmniFM diagnostics" if trainer.algorithm.uses_bank else "diagnostics"  # input ablations: any algorithm
            self.log_info(fl_ctx, f"round {current} {site}: {label} {shown}")
        self._stream(result.metrics, current)
        out = DXO(data_kind=DataKind.WEIGHTS, data=wire.to_numpy(result.weights), meta=wire.result_meta(result))
        out.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, result.n_samples)
        return out.to_shareable()

    def _get_trainer(self, spec: dict, fl_ctx: FLContext, current: int | None = None) -> SiteTrainer:
        if self._trainer is not None:
            if self._trainer.spec != spec:
                raise ValueError("the server changed the run spec in the middle of a job")
            return self._trainer
        site = fl_ctx.get_identity_name()
        data = self._site_data(spec, fl_ctx)
        trainer = SiteTrainer(
            spec, self.train_config, data.train, data.val, logger=self.logger, test_volumes=data.test, site=site
        )
        self.log_info(fl_ctx, f"{site}: algorithm {spec['algorithm']} on {trainer.device}")
        newest = self._personal_path(spec, fl_ctx)
        path = self._restore_path(newest, current, fl_ctx)
        # a rollback to the previous generation keeps the newest file's privacy accounting (dp/)
        restored = trainer.load_personal(path, spent_from=newest if path != newest else None) if path else None
        if restored is not None:
            self.log_info(fl_ctx, f"{site}: restored personal parameters saved after round {restored}")
        self._trainer = trainer
        return trainer

    def _restore_path(self, path: Path, current: int | None, fl_ctx: FLContext) -> Path | None:
        """The personal file that matches the server's model for a train task of round ``current``.

        The server's model of round ``current`` was saved after round ``current - 1``. A site file
        saved after a later round means the server stopped before aggregating it (a crash and a
        resume): use the previous generation if it matches, and say so.
        """
        saved = saved_round(path)
        if saved is None or current is None or saved < int(current):
            if saved is not None and current is not None and saved < int(current) - 1:
                self.log_info(fl_ctx, f"personal state saved after round {saved} is {int(current) - 1 - saved} "
                              f"round(s) behind the global model (this site missed rounds)")
            return path if saved is not None else None
        previous = previous_personal_path(path)
        prev_round = saved_round(previous)
        ahead = (
            f"personal state saved after round {saved} is ahead of the global model (saved after round "
            f"{int(current) - 1}): the server stopped before aggregating round {saved}"
        )
        if prev_round == int(current) - 1:
            self.log_warning(fl_ctx, f"{ahead}; using the previous copy saved after round {prev_round}")
            return previous
        self.log_warning(fl_ctx, f"{ahead}; no copy saved after round {int(current) - 1} exists, using round {saved}'s")
        return path

    def _site_data(self, spec: dict, fl_ctx: FLContext) -> SiteData:
        """The site's checked cases: its omnifm_site.json, or (simulator only) the built-in phantom."""
        site = fl_ctx.get_identity_name()
        workspace = fl_ctx.get_engine().get_workspace()
        fallback = simulator_config(site, self.phantom_cases, self.phantom_shape, self.val_fraction, self.train_config.seed,
                                    modalities=self.phantom_modalities.get(site))
        simulate = bool(fl_ctx.get_prop(FLContextKey.SIMULATE_MODE, False))
        config, source = find_site_config(workspace.get_site_config_dir(), simulate, fallback)
        data = load_site_data(config, workspace.get_root_dir(), site, get_task(spec["task"]))
        log = self.log_warning if data.synthetic else self.log_info
        log(fl_ctx, f"{site} data ({source}): {data.description}" + (" -- NOT patient data" if data.synthetic else ""))
        if data.problems:  # skipped cases, and masked modalities of kept paired cases, by case index
            self.log_warning(fl_ctx, f"{site}: the integrity gate skipped {data.skipped} case(s): " + "; ".join(data.problems))
        return data

    @staticmethod
    def _personal_path(spec: dict, fl_ctx: FLContext) -> Path:
        """``<site workspace>/omnifm_personal/<algorithm>-<spec hash>.pt``: one file per model spec."""
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
        root = Path(fl_ctx.get_engine().get_workspace().get_root_dir())
        return root / "omnifm_personal" / f"{spec['algorithm']}-{digest}.pt"

    def _stream(self, metrics: dict[str, float], current: int) -> None:
        if self._writer is None:
            return
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, global_step=current)


def _check_federated(spec: dict) -> None:
    """Refuse references that are not a federation (``central`` pools every site's data)."""
    algo = get_algorithm(spec["algorithm"])
    if not algo.federated:
        raise ValueError(
            f"algorithm {algo.name!r} is not a federated algorithm ({algo.description}); run it with the "
            "in-process benchmark (omnifm-bench / python -m omnifm.bench), not as a FLARE job"
        )


def _site_modalities(value: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """``phantom_modalities`` checked: site name -> non-empty list of known, distinct modalities.

    Raises:
        ValueError: naming the site and the problem.
    """
    from omnifm.data.modalities import MODALITIES

    value = dict(value or {})
    for site, modalities in value.items():
        ok = isinstance(modalities, list) and modalities and len(set(modalities)) == len(modalities)
        if not ok or any(m not in MODALITIES for m in modalities):
            raise ValueError(f"phantom_modalities[{site!r}] must be a list of distinct modalities from "
                             f"{list(MODALITIES)}, got {modalities!r}")
    return value
