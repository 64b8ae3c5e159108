"""One training run, start to finish, into its run folder; resumable from its last checkpoint.

`python -m modexp.train RUN_DIR` trains the run described by RUN_DIR/config.yaml and run.json (the sweep
starts one such process per run); `modexp train [overrides]` writes those files and calls the same code.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import flops
from .config import Config, to_typed
from .data import Corpus, load_corpus
from .errors import ModexpError
from .model import ModelConfig, Transformer
from .model.routing import RoutingRecord
from .plan import RunSpec
from .rundir import EXIT_LOCKED, RunLock, load_run
from .tracking import MetricsLog, WandbMirror, environment, read_json, read_status, set_status, write_json

log = logging.getLogger("modexp.train")

CHECKPOINT = "checkpoints/last.pt"


class NonFiniteLoss(RuntimeError):
    pass


def lr_at(step: int, steps: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to min_ratio * peak at the run's last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - 1 - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModexpError("device=cuda is not available on this machine: use device=auto or device=cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def make_optimizer(model: Transformer, cfg: Config) -> torch.optim.AdamW:
    # Weight decay on matrices (and embeddings), not on norm gains or biases.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2), fused=True)


def split_predictor_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(every other parameter, the causal-routing predictors' parameters)."""
    trunk, predictor = [], []
    for name, param in model.named_parameters():
        (predictor if ".predictor." in name else trunk).append(param)
    return trunk, predictor


def clip_gradients(trunk: list[nn.Parameter], predictor: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the model's and the predictors' gradients each by its own norm; return the model's norm.

    One global norm would let the predictor's gradient scale the trunk's update whenever clipping bites, and
    the predictor must never change the language model (mod-method.md).
    """
    if predictor:
        torch.nn.utils.clip_grad_norm_(predictor, max_norm)
    return torch.nn.utils.clip_grad_norm_(trunk, max_norm)


def routing_stats(records: list[RoutingRecord], router_weight: str) -> dict[str, float]:
    """Per routed block: fraction processed, router weight statistics, causal-router accuracy vs top-k."""
    stats: dict[str, float] = {}
    accs = []
    for rec in records:
        r = rec.router_logits.detach().float()
        g = torch.sigmoid(r) if router_weight == "sigmoid" else r
        layer = rec.layer
        stats[f"routed_frac/{layer}"] = rec.mask.float().mean().item()
        stats[f"router_weight_mean/{layer}"] = g.mean().item()
        stats[f"router_weight_std/{layer}"] = g.std().item()
        causal_logits = rec.predictor_logits if rec.predictor_logits is not None else None
        if causal_logits is None and rec.aux_loss is not None:
            causal_logits = r  # aux_loss: the router itself decides (sigmoid(r) > 0.5)
        if causal_logits is not None:
            decided = causal_logits.detach() > 0
            acc = (decided == rec.topk_mask).float().mean().item()
            stats[f"causal_acc/{layer}"] = acc
            stats[f"causal_frac/{layer}"] = decided.float().mean().item()
            accs.append(acc)
    if accs:
        stats["causal_acc"] = sum(accs) / len(accs)
    return stats


@torch.no_grad()
def evaluate(
    model: Transformer, batches: list, device: torch.device, autocast: Any, seed: int
) -> dict[str, float]:
    """Validation loss on the fixed held-out set, token-weighted; for MoD also with causal routing."""
    model.eval()
    modes = ["topk"]
    if model.cfg.routing == "random" or (model.cfg.routing == "topk" and model.cfg.causal_router != "none"):
        modes.append("causal")
    result = {}
    # Random routing draws from the RNG: fork it so evaluation is repeatable and training's stream is untouched.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for mode in modes:
            total, count, decided = 0.0, 0, 0
            processed = agreed = torch.zeros((), device=device)  # summed on the device: no sync per block
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                with autocast:
                    out = model(x, y, routing_mode=mode)
                total += out.loss.item() * y.numel()
                count += y.numel()
                if mode == "causal":
                    for rec in out.routing:
                        processed = processed + rec.mask.sum()
                        agreed = agreed + (rec.mask == rec.topk_mask).sum()
                        decided += rec.mask.numel()
            result["val_loss" if mode == "topk" else "val_loss_causal"] = total / count
            if decided:
                # What causal routing really did at validation: the share of tokens the routed blocks processed
                # (top-k processes exactly `capacity`) and how often it agreed with top-k membership.
                result["val_causal_frac"] = processed.item() / decided
                result["val_causal_acc"] = agreed.item() / decided
    model.train()
    return result


def routing_sample(model: Transformer, corpus: Corpus, device: torch.device) -> dict[str, Any] | None:
    """Which tokens each routed block took on one held-out window (the paper's Fig. 5)."""
    if model.cfg.routing == "none":
        return None
    x, _ = corpus.val_batches(1, model.cfg.seq_len, model.cfg.seq_len)[0]
    model.eval()
    with torch.no_grad():
        out = model(x.to(device))
    model.train()
    tokens = x[0].tolist()
    gate = torch.sigmoid if model.cfg.router_weight == "sigmoid" else (lambda t: t)
    return {
        "tokens": tokens,
        "text": bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")
        if model.cfg.vocab_size == 256
        else "",
        "layers": [r.layer for r in out.routing],
        "selected": [r.mask[0].int().tolist() for r in out.routing],
        "router_weights": [gate(r.router_logits[0].float()).tolist() for r in out.routing],
        "capacity": model.cfg.capacity,
    }


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: write a temp file, then rename, so a kill mid-write leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if not any(
        isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers
    ):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(stream)
    root.setLevel(logging.INFO)
    return handler


def train_run(run_dir: Path, corpus: Corpus | None = None) -> dict[str, Any]:
    """Train (or resume) the run in run_dir. Returns its summary. Raises on failure, after recording it."""
    dict_cfg, spec = load_run(run_dir)
    cfg = to_typed(dict_cfg)
    lock = RunLock(run_dir)
    if not lock.acquire():
        raise RunLocked(run_dir)
    try:
        if read_status(run_dir).get("state") == "done" and (run_dir / "summary.json").exists():
            log.info("%s is already done", run_dir)
            return read_json(run_dir / "summary.json")
        handler = _setup_logging(run_dir)
        try:
            return _train(run_dir, dict_cfg, cfg, spec, corpus)
        except KeyboardInterrupt:  # a signal before or after the training loop's own handler
            if read_status(run_dir).get("state") in ("running", "planned"):
                set_status(run_dir, "interrupted", reason="interrupted by signal; rerun to resume")
            raise
        finally:  # runs trained in one process must not write into each other's logs
            logging.getLogger().removeHandler(handler)
            handler.close()
    finally:
        lock.release()


class RunLocked(Exception):
    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"{run_dir} is being trained by another process")


def _train(
    run_dir: Path, dict_cfg: DictConfig, cfg: Config, spec: RunSpec, corpus: Corpus | None
) -> dict[str, Any]:
    device = pick_device(cfg.device)
    if os.environ.get("MODEXP_THREADS"):
        torch.set_num_threads(int(os.environ["MODEXP_THREADS"]))
    corpus = corpus or load_corpus(cfg.data, spec.model.seq_len)
    model_cfg: ModelConfig = spec.model
    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    step_model = torch.compile(model) if cfg.train.compile else model
    use_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if use_bf16
        else contextlib.nullcontext()
    )
    count = flops.count(model_cfg)
    seq_len, steps = model_cfg.seq_len, spec.steps
    warmup = min(cfg.train.max_warmup_steps, max(1, round(cfg.train.warmup_fraction * steps)))

    ckpt_path = run_dir / CHECKPOINT
    start_step, wall_before = 0, 0.0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        start_step, wall_before = int(state["step"]), float(state["wall_time"])
        log.info("resuming %s at step %d of %d", spec.run_id, start_step, steps)

    meta = {
        **environment(),
        "run_id": spec.run_id,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "precision": "bf16" if use_bf16 else "fp32",
        "corpus": {"fingerprint": corpus.fingerprint, **corpus.description},
        "accounting": {**flops.describe(model_cfg), "convention": "exact", "shape": spec.shape},
        "resumed_from_step": start_step or None,
    }
    write_json(run_dir / "meta.json", meta)
    set_status(run_dir, "running", pid=os.getpid(), step=start_step, steps=steps)
    metrics = MetricsLog(run_dir / "metrics.jsonl", start_step if start_step else None)
    config_dict = OmegaConf.to_container(dict_cfg, resolve=True)
    mirror = WandbMirror(
        run_dir,
        spec.run_id,
        cfg.tracker.wandb,
        spec.sweep,
        spec.variant,
        {"config": config_dict, "run": {k: v for k, v in spec.row().items()}},
    )
    val_batches = corpus.val_batches(cfg.train.batch_size, seq_len, cfg.train.eval_tokens)

    def checkpoint(step: int, wall: float) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "wall_time": wall,
            "rng_cpu": torch.get_rng_state(),
            "model_config": vars(model_cfg).copy(),
            "run_id": spec.run_id,
        }
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(ckpt_path, state)

    trunk_params, predictor_params = split_predictor_params(model)
    progress = _Progress(spec, start_step)
    step_times: list[float] = []
    t_start = time.perf_counter()
    last_eval: dict[str, float] = {}
    step = start_step
    try:
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            # The last step may hold fewer sequences: that is what lands the FLOPs within 1% of the budget.
            batch = min(spec.batch_size, spec.num_sequences - step * spec.batch_size)
            x, y = corpus.train_batch(step, batch, seq_len, cfg.seed)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = lr_at(step, steps, cfg.train.lr, warmup, cfg.train.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                out = step_model(x, y)
            loss = out.loss + out.aux_loss if out.aux_loss is not None else out.loss
            loss.backward()
            grad_norm = clip_gradients(trunk_params, predictor_params, cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            tokens = min(done * spec.batch_size, spec.num_sequences) * seq_len
            is_last = done == steps
            will_log = done % cfg.train.log_every == 0 or is_last or step == start_step
            will_save = done % cfg.train.checkpoint_every == 0 or done % cfg.train.eval_every == 0
            if will_log or will_save:
                lm_loss = out.loss.item()  # the one sync per logged step; never checkpoint a diverged model
                if not (math.isfinite(lm_loss) and math.isfinite(float(grad_norm))):
                    raise NonFiniteLoss(
                        f"non-finite loss {lm_loss} (grad norm {float(grad_norm)}) at step {done}"
                    )
            if will_log:
                dt = time.perf_counter() - t0
                step_times.append(dt)
                wall = wall_before + time.perf_counter() - t_start
                record = {
                    "kind": "train",
                    "step": done,
                    "tokens": tokens,
                    "flops": tokens * count.train_per_token,
                    "loss": lm_loss,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "step_time": dt,
                    "tokens_per_s": batch * seq_len / dt,
                    "wall_time": wall,
                }
                if out.aux_loss is not None:
                    record["aux_loss"] = out.aux_loss.item()
                record.update(routing_stats(out.routing, model_cfg.router_weight))
                metrics.write(record)
                mirror.log({f"train/{k}": v for k, v in record.items() if k not in ("kind", "step")}, done)
                progress.update(done, lm_loss)
            if done % cfg.train.eval_every == 0 or is_last:
                last_eval = evaluate(model, val_batches, device, autocast, cfg.seed)
                wall = wall_before + time.perf_counter() - t_start
                metrics.write(
                    {
                        "kind": "val",
                        "step": done,
                        "tokens": tokens,
                        "flops": tokens * count.train_per_token,
                        "wall_time": wall,
                        **last_eval,
                    }
                )
                mirror.log({f"val/{k.removeprefix('val_')}": v for k, v in last_eval.items()}, done)
                progress.note(f"step {done}/{steps} val_loss {last_eval['val_loss']:.4f}")
            if done % cfg.train.checkpoint_every == 0 or is_last:
                checkpoint(done, wall_before + time.perf_counter() - t_start)
                set_status(run_dir, "running", pid=os.getpid(), step=done, steps=steps)
    except NonFiniteLoss as exc:
        _fail(run_dir, mirror, metrics, progress, str(exc), step + 1)
        raise
    except KeyboardInterrupt:
        set_status(run_dir, "interrupted", reason="interrupted by signal; rerun to resume", step=step)
        metrics.close()
        progress.close()
        mirror.finish(None, exit_code=130)
        raise
    except Exception as exc:
        _fail(run_dir, mirror, metrics, progress, f"{type(exc).__name__}: {exc}", step + 1)
        raise
    progress.close()
    metrics.close()
    if not last_eval:  # killed after the final checkpoint but before the summary: score the final weights
        last_eval = evaluate(model, val_batches, device, autocast, cfg.seed)

    wall_time = wall_before + time.perf_counter() - t_start
    sample = routing_sample(model, corpus, device)
    if sample is not None:
        write_json(run_dir / "routing_sample.json", sample)
    step_time = sorted(step_times)[len(step_times) // 2] if step_times else float("nan")
    routed_by = model_cfg.causal_router if model_cfg.routing == "topk" else "none"
    summary = {
        **spec.row(),
        "sweep": spec.sweep,
        "routing": model_cfg.routing,
        "capacity": model_cfg.capacity if model_cfg.routing != "none" else 1.0,
        "route_every": model_cfg.route_every if model_cfg.routing != "none" else 0,
        "causal_router": model_cfg.causal_router if model_cfg.routing == "topk" else "none",
        "router_weight": model_cfg.router_weight,
        "d_ff": model_cfg.ffn_dim,
        "seq_len": seq_len,
        "vocab_size": model_cfg.vocab_size,
        "batch_size": spec.batch_size,
        # The resolved hyperparameters: the analysis pools runs only over seed and lr, and refuses the rest.
        "lr": cfg.train.lr,
        "lr_rule": spec.lr_rule,
        "schedule": "cosine",
        "min_lr_ratio": cfg.train.min_lr_ratio,
        "warmup_fraction": cfg.train.warmup_fraction,
        "max_warmup_steps": cfg.train.max_warmup_steps,
        "warmup_steps": warmup,
        "weight_decay": cfg.train.weight_decay,
        "beta1": cfg.train.beta1,
        "beta2": cfg.train.beta2,
        "grad_clip": cfg.train.grad_clip,
        "precision": cfg.train.precision,
        "eval_tokens": cfg.train.eval_tokens,
        "seed": cfg.seed,
        "aux_loss_weight": model_cfg.aux_loss_weight if routed_by == "aux_loss" else 0.0,
        "predictor_hidden": model_cfg.predictor_hidden if routed_by == "predictor" else 0,
        "val_loss": last_eval.get("val_loss"),
        "val_loss_causal": last_eval.get("val_loss_causal"),
        "val_causal_frac": last_eval.get("val_causal_frac"),
        "val_causal_acc": last_eval.get("val_causal_acc"),
        "wall_time": wall_time,
        "step_time": step_time,
        "tokens_per_s": spec.batch_size * seq_len / step_time if step_times else None,
        "device": str(device),
        "corpus_fingerprint": corpus.fingerprint,
    }
    write_json(run_dir / "summary.json", summary)
    set_status(run_dir, "done", step=steps, steps=steps, wall_time=wall_time)
    mirror.finish({"val_loss": summary["val_loss"], "flops": summary["flops"]}, exit_code=0)
    log.info("done %s: val_loss %.4f in %.1f s", spec.run_id, summary["val_loss"], wall_time)
    return summary


def _fail(
    run_dir: Path, mirror: WandbMirror, metrics: MetricsLog, progress: _Progress, reason: str, step: int
) -> None:
    set_status(run_dir, "failed", reason=reason, step=step)
    metrics.close()
    progress.close()
    mirror.finish(None, exit_code=1)
    log.error("failed at step %d: %s", step, reason)


class _Progress:
    """A tqdm bar on a terminal; plain periodic log lines otherwise (sweeps, CI, log files)."""

    def __init__(self, spec: RunSpec, start: int) -> None:
        self.spec = spec
        self.bar = None
        self.last_line = 0.0
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=spec.steps, initial=start, desc=spec.run_id[:40], unit="step", dynamic_ncols=True
            )

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=True)
        elif time.monotonic() - self.last_line > 10 or step == self.spec.steps:
            self.last_line = time.monotonic()
            log.info("step %d/%d loss %.4f", step, self.spec.steps, loss)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_stopping = False


def _raise_interrupt(signum: int, frame: Any) -> None:
    # Once only: Ctrl-C reaches the child as SIGINT and then SIGTERM from the sweep; a second interrupt
    # inside the handler that records "interrupted" would leave the run marked running.
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of a sweep's child process: `python -m modexp.train RUN_DIR`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m modexp.train RUN_DIR", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):  # a sweep's Ctrl-C or scancel: stop and mark interrupted
        signal.signal(signum, _raise_interrupt)
    try:
        train_run(Path(args[0]))
    except RunLocked as exc:
        print(exc, file=sys.stderr)
        return EXIT_LOCKED
    except ModexpError as exc:
        set_status(Path(args[0]), "failed", reason=str(exc))
        print(f"modexp: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except NonFiniteLoss:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
