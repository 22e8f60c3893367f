"""Synthetic MLPerf result logs for the verifier's tests: a good closed-division DLRM
log on Criteo 1TB and each variant that accepted submissions show, built on request
(events); a good closed-division DLRMv2 (dlrm_dcnv2) log and its changes (dcnv2_events)."""
import json

TENSORS = ["embeddings"] + [f"bottom_mlp_dense{i}" for i in (1, 2, 3)] + [f"top_mlp_dense{i}" for i in range(1, 6)]
CRITEO_TRAIN = 4195197692
KINDS = {"init_start": "INTERVAL_START", "run_start": "INTERVAL_START", "epoch_start": "INTERVAL_START",
         "block_start": "INTERVAL_START", "eval_start": "INTERVAL_START", "init_stop": "INTERVAL_END",
         "run_stop": "INTERVAL_END", "epoch_stop": "INTERVAL_END", "block_stop": "INTERVAL_END",
         "eval_stop": "INTERVAL_END"}


def events(**change):
    """A closed-division DLRM log on Criteo 1TB that passes every check, as
    (key, value, metadata) triples; keyword arguments change it:
      submission_late, drop_tensor, drop_key, duplicate, lr, power, train_samples, aucs, epochs, status,
      batch, optimizer, org, seed: as named;
      no_tensors: no weights_initialization at all; no_seed;
      weights_before_init: weights_initialization before init_start (post-processed logs);
      train_samples_after_stop: train_samples logged after run_stop as the samples trained (HugeCTR);
      last_eval_stop_missing: the last evaluation has no eval_stop;
      epochs_count_evals: epoch_num 1, 2, 3, ... (Google v0.7);
      late_evals: (epoch, auc) evaluations logged after run_stop."""
    tensors = [] if change.get("no_tensors") else \
        [("weights_initialization", None, {"tensor": t}) for t in TENSORS if t != change.get("drop_tensor")]
    e = [("cache_clear", True, {})]
    if change.get("weights_before_init"):
        e = tensors + e
    e += [("init_start", None, {})]
    submission = [("submission_benchmark", "dlrm", {}), ("submission_org", change.get("org", "reference"), {}),
                  ("submission_division", "closed", {}), ("submission_status", "onprem", {}),
                  ("submission_platform", "cpu", {})]
    if not change.get("submission_late"):
        e += submission
    if not change.get("weights_before_init"):
        e += tensors
    lr = change.get("lr", 1.0)
    hyper = [("seed", change.get("seed", 3), {}), ("global_batch_size", change.get("batch", 2048), {}),
             ("gradient_accumulation_steps", 1, {}),
             ("train_samples", change.get("train_samples", CRITEO_TRAIN), {}), ("eval_samples", 89137319, {}),
             ("opt_name", change.get("optimizer", "sgd"), {}), ("opt_base_learning_rate", lr, {}),
             ("opt_learning_rate_warmup_steps", 0, {}), ("lr_decay_start_steps", 0, {}),
             ("sgd_opt_base_learning_rate", lr, {}), ("sgd_opt_learning_rate_decay_steps", 0, {}),
             ("sgd_opt_learning_rate_decay_poly_power", change.get("power", 2), {})]
    dropped = {change.get("drop_key")} | ({"seed"} if change.get("no_seed") else set()) | \
        ({"train_samples"} if change.get("train_samples_after_stop") else set())
    e += [h for h in hyper if h[0] not in dropped]
    if change.get("duplicate"):
        e += [h for h in hyper if h[0] == change["duplicate"]]
    e += [("init_stop", None, {}), ("run_start", None, {})]
    if change.get("submission_late"):
        e += submission
    e += [("epoch_start", None, {"epoch_num": 1})]
    aucs = change.get("aucs", [0.79, 0.80, 0.8031])
    epochs = change.get("epochs", [1.05, 1.10, 1.15])
    start = 1.0
    for i, (epoch, auc) in enumerate(zip(epochs, aucs, strict=True)):
        logged = i + 1 if change.get("epochs_count_evals") else epoch
        e += [("block_start", None, {"first_epoch_num": start, "epoch_count": round(epoch - start, 4)}),
              ("block_stop", None, {"first_epoch_num": start}), ("eval_start", None, {"epoch_num": logged})]
        if not (change.get("last_eval_stop_missing") and i == len(epochs) - 1):
            e += [("eval_stop", None, {"epoch_num": logged})]
        e += [("eval_accuracy", auc, {"epoch_num": logged})]
        start = epoch
    reached = any(a >= 0.8025 for a in aucs)
    e += [("run_stop", None, {"status": change.get("status", "success" if reached else "aborted")})]
    for epoch, auc in change.get("late_evals", []):
        e += [("eval_start", None, {"epoch_num": epoch}), ("eval_stop", None, {"epoch_num": epoch}),
              ("eval_accuracy", auc, {"epoch_num": epoch})]
    if change.get("train_samples_after_stop"):
        e += [("train_samples", int(round((epochs[-1] - 1) * CRITEO_TRAIN)), {})]
    return e


def write_log(path, triples, backwards_at=None, style="plain", ranks=1, start_ms=1_700_000_000_000):
    """Write the events as MLLOG lines, one second apart. style: plain; no_event_type
    (Google v0.7); ranks ('[r] :::MLLOG' prefixes; cache_clear and init_start printed by
    ``ranks`` ranks, the rest by rank 0, as Intel v1.0 logs); crlf_noise (CRLF endings and
    program output between the lines, as HugeCTR logs)."""
    lines = []
    for i, (key, value, metadata) in enumerate(triples):
        t = start_ms + 1000 * i - (5000 if backwards_at is not None and i == backwards_at else 0)
        d = {"namespace": "", "time_ms": t, "event_type": KINDS.get(key, "POINT_IN_TIME"), "key": key,
             "value": value, "metadata": {"file": "reference/train.py", "lineno": 100 + i, **metadata}}
        if style == "no_event_type":
            del d["event_type"]
        text = ":::MLLOG " + json.dumps(d)
        if style == "ranks":
            lines += [f"[{r}] {text}" for r in range(ranks if key in ("cache_clear", "init_start") else 1)]
        elif style == "crlf_noise":
            lines += [f"[HCTR][{i:05d}] iteration {i} loss 0.13", text]
        else:
            lines.append(text)
    end = "\r\n" if style == "crlf_noise" else "\n"
    with open(path, "w", newline="") as f:
        f.write(end.join(lines) + end)
    return str(path)


# The values closed_dlrm_dcnv2.yaml fixes (and every RCP of dlrm_dcnv2 was run with).
ADAGRAD = {"opt_adagrad_learning_rate_decay": 0.0, "opt_weight_decay": 0.0,
           "opt_adagrad_initial_accumulator_value": 0.0, "opt_adagrad_epsilon": 1e-8,
           "opt_learning_rate_warmup_steps": 0, "opt_learning_rate_decay_start_step": 0,
           "opt_learning_rate_decay_steps": 0}


def dcnv2_events(final=0.8, **change):
    """A closed-division dlrm_dcnv2 log on Criteo 1TB (training 3.0.0 - 6.0.0) that passes every check:
    evaluations every 0.05 epoch from epoch_num 0.05 (epoch_num counts from 0), the one at ``final``
    reaching the target 0.80275. Keyword arguments change it:
      batch, lr, org, seed, division, benchmark: as named; adagrad: {key: value} over ADAGRAD."""
    e = [("cache_clear", True, {}), ("init_start", None, {}),
         ("submission_benchmark", change.get("benchmark", "dlrm_dcnv2"), {}),
         ("submission_org", change.get("org", "reference"), {}),
         ("submission_division", change.get("division", "closed"), {}), ("submission_status", "onprem", {}),
         ("submission_platform", "cpu", {}),
         ("seed", change.get("seed", 3), {}), ("global_batch_size", change.get("batch", 65536), {}),
         ("gradient_accumulation_steps", 1, {}), ("train_samples", CRITEO_TRAIN, {}),
         ("eval_samples", 89137319, {}), ("opt_name", "adagrad", {}),
         ("opt_base_learning_rate", change.get("lr", 0.004), {})]
    e += [(key, value, {}) for key, value in {**ADAGRAD, **change.get("adagrad", {})}.items()]
    e += [("init_stop", None, {}), ("run_start", None, {}), ("epoch_start", None, {"epoch_num": 0})]
    epochs = [round(0.05 * k, 2) for k in range(1, int(round(final / 0.05)) + 1)]
    start = 0.0
    for epoch in epochs:
        auc = 0.8028 if epoch == epochs[-1] else 0.79
        e += [("block_start", None, {"first_epoch_num": start, "epoch_count": round(epoch - start, 4)}),
              ("block_stop", None, {"first_epoch_num": start}), ("eval_start", None, {"epoch_num": epoch}),
              ("eval_stop", None, {"epoch_num": epoch}), ("eval_accuracy", auc, {"epoch_num": epoch})]
        start = epoch
    return e + [("run_stop", None, {"status": "success"})]
