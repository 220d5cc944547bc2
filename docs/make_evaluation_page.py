"""Render docs/EVALUATION.md from the output folders of `edge-etc evaluate`.

Usage: python docs/make_evaluation_page.py MAIN [NAME=ABLATION ...] [--averages RUN]
           [--other-folds RUN ...] [--ablation-reference RUN] [--notes FILE] [--store DIR]
           > docs/EVALUATION.md
       python docs/make_evaluation_page.py --stored DIR [--notes FILE] > docs/EVALUATION.md

MAIN is a run with baselines and int8; each NAME=ABLATION is an ablation run, listed with
the flags it was run with. Each is an output folder of `edge-etc evaluate` or a JSON file
of the kind --store writes. RUN is a run with baselines and int8 made with another
`--average-size`, shown in a section of its own. Each `--other-folds` RUN (the option
may repeat) is a run with baselines and int8 made with another `--seed`, so on another
deal of the captures into folds, also shown in a section of its own. `--ablation-reference` RUN is an earlier main
run whose first repeats the ablations were paired with, when the main run came later with
other settings. FILE, a hand-written findings section, is appended after the tables
(docs/evaluation/findings.md).

--store DIR writes what the page needs of each run into DIR: main.json and one
ablation-NAME.json per ablation, with its summary row and flags only, index.json, the
ablations' names and files in order, averages.json and other-folds-seed-N.json, what the
page shows of the other runs, and ablation-reference.json, the scores of the reference run
that the ablations' table reads. --stored DIR renders the page again from DIR alone
(docs/evaluation/runs/ in the repository).
"""

import json
import os
import sys


def load(path):
    if os.path.isdir(path):
        path = os.path.join(path, "evaluation.json")
    with open(path) as f:
        return json.load(f)


def slug(name):
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def trim_averages_run(run):
    """Return what `results_section` reads of a run: its summary rows and the per-fold scores
    of its averages and networks."""
    def scores(result):
        return {"float": [{"macro_f1": r["macro_f1"]} for r in result["float"]],
                "int8": [{"macro_f1": r["macro_f1"]} for r in result["int8"]]}

    net = run["cnn_lstm"]
    ensemble = net["ensemble"]
    trimmed = {key: run[key] for key in ("flags", "repeats", "seconds", "settings", "folds", "summary",
                                         "seed", "port_prior") if key in run}
    # Runs from before `evaluate --average-size` averaged the bundled model's members.
    trimmed["average_size"] = run.get("average_size", ensemble["members"])
    trimmed["cnn_lstm"] = {**scores(net), "ensemble": {
        **scores(ensemble), "members": ensemble["members"], "groups": ensemble["groups"],
        "int8_changed": ensemble["int8_changed"], "repeat_float": ensemble["repeat_float"]}}
    return trimmed


def trim_reference_run(run):
    """Return what `first_repeats` reads of a run: the networks' per-fold and per-repeat
    scores and the averages' groups and scores."""
    net = run["cnn_lstm"]
    trimmed = {"folds": run["folds"], "repeats": run["repeats"], "port_prior": run.get("port_prior", False),
               "cnn_lstm": {"float": [{"macro_f1": r["macro_f1"]} for r in net["float"]],
                            "repeat_float": net["repeat_float"]}}
    if "ensemble" in net:
        trimmed["cnn_lstm"]["ensemble"] = {key: net["ensemble"][key]
                                           for key in ("groups", "repeat_float")}
    return trimmed


def store(directory, main_run, ablations, averages=None, other_folds=(), reference=None):
    """Write the runs the page is made of into `directory` (see the module docstring)."""
    os.makedirs(directory, exist_ok=True)
    for run in other_folds:
        with open(os.path.join(directory, f"other-folds-seed-{run['seed']}.json"), "w") as f:
            json.dump(trim_averages_run(run), f, indent=None, separators=(",", ":"))
            f.write("\n")
    if reference is not None:
        with open(os.path.join(directory, "ablation-reference.json"), "w") as f:
            json.dump(trim_reference_run(reference), f, indent=None, separators=(",", ":"))
            f.write("\n")
    for name, run in (("averages.json", averages),):
        if run is not None:
            with open(os.path.join(directory, name), "w") as f:
                json.dump(trim_averages_run(run), f, indent=None, separators=(",", ":"))
                f.write("\n")
    with open(os.path.join(directory, "main.json"), "w") as f:
        json.dump(main_run, f, indent=None, separators=(",", ":"))
    index = []
    for name, path in ablations:
        index.append([name, f"ablation-{slug(name)}.json"])
        run = load(path)
        int8 = "overall_int8" in run.get("cnn_lstm", {})
        summary = {key: run[key] for key in ("flags", "repeats", "seconds", "settings") if key in run}
        summary["summary"] = [r for r in run["summary"] if r["name"].startswith("CNN-LSTM")]
        summary["cnn_lstm"] = {"overall_int8": True} if int8 else {}
        with open(os.path.join(directory, f"ablation-{slug(name)}.json"), "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


def depth_section(w, ev):
    """Write the tables of flow scores by windows per decision, when the run has them."""
    depths = ev["cnn_lstm"].get("depths")
    if not depths:
        return
    w("## Windows per decision\n")
    w("The runner decides on a flow's first complete window by default; with `--max-windows N` it "
      "averages the class probabilities of the flow's first N windows. Every row scores the same "
      "trained models, so the rows differ only by the decision rule. A flow with "
      "fewer windows than N is decided on the windows it has.\n")
    ensemble = ev["cnn_lstm"].get("ensemble")
    if ensemble and ensemble.get("depths"):
        w(f"Averages of {ensemble['members']} networks per fold, as bundled ({groups_text(ensemble)}; "
          "float per average):\n")
        depth_table(w, ensemble["depths"])
        baseline_depth_table(w, ev, ensemble)
        w("Each network alone (all repeats):\n")
    depth_table(w, depths)


def baseline_depth_table(w, ev, ensemble):
    """Write the averaged models' macro-F1 by windows per decision beside the baselines
    averaged the same way, when the run scored the baselines' depths."""
    columns = [("CNN-LSTM int8", ensemble["depths"], "repeat_int8")]
    for key, name in (("one_packet_cnn", "one-packet CNN"), ("stats_port", "statistics + server port"),
                      ("stats", "statistics")):
        depths = (ev.get(key) or {}).get("ensemble", {}).get("depths")
        if depths:
            columns.append((name, depths, "repeat_float"))
    if len(columns) == 1:
        return
    port = ev.get("port", {}).get("overall", {}).get("macro_f1")
    w(f"The baselines averaged in the same groups, by the same rule (macro-F1, mean of the "
      f"averages){'; the server port alone does not depend on it' if port is not None else ''}:\n")
    w("| windows | " + " | ".join(name for name, _, _ in columns)
      + (" | server port |" if port is not None else " |"))
    w("| --- |" + " --- |" * (len(columns) + (port is not None)))
    for d in ensemble["depths"]:
        cells = []
        for _, depths, key in columns:
            values = depths.get(d, {}).get(key) or []
            cells.append(f"{sum(values) / len(values):.3f}" if values else "")
        w(f"| {d} | " + " | ".join(cells) + (f" | {port:.3f} |" if port is not None else " |"))
    w("")


def first_repeats(ev, n, averages=None):
    """Return the summary of the main run's first `n` repeats, with the same seeds as
    ablations run with `--repeats n`: the networks' rows and the average of their networks,
    from the main run or else from the `averages` run when one of them averaged them."""
    folds = ev["folds"]
    net = ev["cnn_lstm"]
    reports = net["float"][:n * folds]
    per_repeat = net["repeat_float"][:n]
    fold_f1 = [round(sum(reports[r * folds + f]["macro_f1"] for r in range(n)) / n, 4)
               for f in range(folds)]
    rows = [{"name": "CNN-LSTM float", "macro_f1": round(sum(per_repeat) / n, 4),
             "repeat_macro_f1": per_repeat, "fold_macro_f1": fold_f1}]
    ensembles = [run["cnn_lstm"].get("ensemble") for run in (ev, averages) if run]
    ensemble = next((e for e in ensembles if e and e.get("groups", [[]])[0] == list(range(n))), None)
    if ensemble:
        first = ensemble["repeat_float"][0]
        rows.append({"name": f"CNN-LSTM float, average of {n}", "macro_f1": first,
                     "repeat_macro_f1": [first]})
    return {"summary": rows, "repeats": n}


def groups_text(ensemble):
    """Name the repeats each average combines; runs without the list averaged all repeats."""
    groups = ensemble.get("groups")
    if not groups:
        return "all the repeats"
    return ", ".join(f"repeats {g[0]}-{g[-1]}" for g in groups)


def average_cell(row):
    per_average = row.get("repeat_macro_f1") or []
    if len(per_average) < 2:
        return f"{row['macro_f1']:.3f}"
    return f"{row['macro_f1']:.3f} ({' '.join(f'{v:.3f}' for v in per_average)})"


def depth_table(w, depths):
    has_changed = any(r.get("changed") for r in depths.values())
    w("| windows | float | int8 | largest float/int8 gap on a fold | "
      + ("labelled flows int8 decides differently | " if has_changed else "") + "float per repeat |")
    w("| --- | --- | --- | --- | " + ("--- | " if has_changed else "") + "--- |")
    for d, r in depths.items():
        if not r["repeat_float"]:
            continue
        mean = sum(r["repeat_float"]) / len(r["repeat_float"])
        int8 = sum(r["repeat_int8"]) / len(r["repeat_int8"]) if r["repeat_int8"] else None
        gap = max(abs(a - b) for a, b in zip(r["float"], r["int8"])) if r["int8"] else None
        changed = f"{sum(r['changed'])} | " if has_changed else ""
        w(f"| {d} | {mean:.3f} | {'' if int8 is None else f'{int8:.3f}'} | "
          f"{'' if gap is None else f'{gap:.3f}'} | {changed}"
          f"{' '.join(f'{v:.3f}' for v in r['repeat_float'])} |")
    w("")


def per_class_table(report):
    lines = ["| class | precision | recall | F1 | flows |", "| --- | --- | --- | --- | --- |"]
    for name, r in report["classes"].items():
        lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    lines.append(f"| **macro-F1** | | | **{report['macro_f1']:.3f}** | {report['support']} |")
    return "\n".join(lines)


def confusion_table(report, classes):
    head = "| true \\ predicted | " + " | ".join(c[:6] for c in classes) + " |"
    lines = [head, "| --- |" + " --- |" * len(classes)]
    for name, row in zip(classes, report["confusion"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def application_section(w, ev, repeats):
    """Write the scores on the flows of applications that a training capture shows, and on the others."""
    ensemble = ev["cnn_lstm"].get("ensemble")
    net = (ensemble or ev["cnn_lstm"])["by_application"]
    port = ev["port"]["by_application"]
    apps = ev["applications"]
    unseen = port["unseen"]["port"]["support"]
    total = unseen + port["seen"]["port"]["support"]
    w("## Applications the training captures do not show\n")
    w(f"The corpus's manifest names {apps['names']} applications (or protocols, where nDPI named "
      f"no application), and {apps['in_one_capture']} of them have a single capture. So most test "
      f"flows come from an application that no capture of the training part shows: {unseen} of "
      f"{total} flows. The table splits the flows by that; each cell is flow macro-F1 / accuracy"
      + (f", with the CNN-LSTM as the averages of {ensemble['members']} networks, its flows counted "
         "once per average" if ensemble else
         f"{', with the networks pooled over the repeats' if repeats > 1 else ''}") + ".\n")
    w("| application in a training capture | flows | CNN-LSTM float | CNN-LSTM int8 | server port only |")
    w("| --- | --- | --- | --- | --- |")
    for group, name in (("seen", "yes"), ("unseen", "no")):
        cells = [f"{r['macro_f1']:.3f} / {r['accuracy']:.3f}"
                 for r in (net[group]["float"], net[group]["int8"], port[group]["port"])]
        w(f"| {name} | {port[group]['port']['support']} | " + " | ".join(cells) + " |")
    w("")


def results_section(w, ev):
    """Write the summary table of a run with baselines and the verdict on the project's
    targets. Return the scored product (the averages, or the networks) and its name."""
    ensemble = ev["cnn_lstm"].get("ensemble")
    repeats = ev.get("repeats", 1)

    w("| model | flow macro-F1, all folds | per repeat or average | per fold |")
    w("| --- | --- | --- | --- |")
    for r in ev["summary"]:
        per_repeat = r.get("repeat_macro_f1") or [r["macro_f1"]]
        spread = (" ".join(f"{v:.3f}" for v in per_repeat) if len(per_repeat) > 1 else
                  "(one average)" if ", average of" in r["name"] else "(one run)")
        w(f"| {r['name']} | {r['macro_f1']:.3f} | {spread} | {' '.join(f'{v:.3f}' for v in r['fold_macro_f1'])} |")
    w("")

    baselines = [r for r in ev["summary"] if not r["name"].startswith("CNN-LSTM")]
    best = max(baselines, key=lambda r: r["macro_f1"])
    best_baseline = best["macro_f1"]
    product = ensemble or ev["cnn_lstm"]
    int8_name = f"CNN-LSTM int8, average of {ensemble['members']}" if ensemble else "CNN-LSTM int8"
    int8 = next(r for r in ev["summary"] if r["name"] == int8_name)["macro_f1"]
    diffs = [abs(a["macro_f1"] - b["macro_f1"]) for a, b in zip(product["float"], product["int8"])]
    verdict = "beats" if int8 >= best_baseline + 0.05 else "does not beat"
    parity = ("within the 1 point the project aims for" if max(diffs) <= 0.01
              else "more than the 1 point the project aims for")

    changed = product.get("int8_changed")
    flips = ""
    if changed:
        n_changed = sum(c["changed"] for c in changed)
        n_flows = sum(c["flows"] for c in changed)
        counted = ("; each flow counts once per average" if ensemble and len(ensemble.get("groups", [])) > 1
                   else "")
        flips = (f" The int8 model decides {n_changed} of the {n_flows} labelled flows "
                 f"({n_changed / n_flows:.1%}{counted}) differently from the float one.")
    subject = (f"The int8 average of {ensemble['members']} CNN-LSTMs" if ensemble
               else "The int8 CNN-LSTM")

    paired = ""
    ours = next(r for r in ev["summary"] if r["name"] == int8_name)["repeat_macro_f1"]
    # The best baseline's averages, on the same seeds as the CNN-LSTM's.
    best_averaged = next((r for r in baselines if ", average of" in r["name"]
                          and r["name"].startswith(best["name"].split(",")[0])), best)
    theirs = best_averaged.get("repeat_macro_f1") or []
    if ensemble and len(ours) > 1 and len(theirs) == len(ours):
        margins = [100 * (a - b) for a, b in zip(ours, theirs)]
        paired = (f" Average by average, on the same seeds, the margins over "
                  f"{best_averaged['name']} are {', '.join(f'{m:.1f}' for m in margins)} points.")

    w(f"**{subject} ({int8:.3f}) {verdict} the best baseline, {best['name']} ({best_baseline:.3f}), "
      f"by the 5 points the project aims for. The margin is {100 * (int8 - best_baseline):.1f} "
      f"points.**{paired} On every fold"
      f"{' of every repeat' if repeats > 1 and not ensemble else ' of every average' if ensemble else ''}, "
      f"its int8 and float forms differ by at most {max(diffs):.3f} flow macro-F1. That is "
      f"{parity}.{flips}\n")
    return product, subject


def averages_section(w, run, main_ensemble, main_prior):
    """Write the section of a run that scores averages of another number of networks."""
    n = run["average_size"]
    ensemble = run["cnn_lstm"]["ensemble"]
    w(f"## Averages of {n} networks\n")
    w(f"The same folds and seeds as the main run, with {run['repeats']} repeats scored as averages of "
      f"{n} networks ({groups_text(ensemble)}), each converted to int8 as one model: "
      f"`edge-etc evaluate --repeats {run['repeats']} --average-size {n}`, {run['seconds'] / 60:.0f} "
      "minutes. The baselines with a seed are averaged the same way."
      + (f" The bundled model has {main_ensemble['members']} networks; the findings below say "
         "why." if main_ensemble else "") + "\n")
    without_prior_note(w, run, main_prior)
    results_section(w, run)


def without_prior_note(w, run, main_prior):
    """Say so when `run` scored its networks without the server port prior and the main
    run with it."""
    if main_prior and not run.get("port_prior"):
        w("This run predates the server port prior, so its networks are scored without it.\n")


def other_folds_section(w, run, main_seed, main_prior):
    """Write the section of a run made with another seed, so on other folds."""
    w(f"## Other folds (seed {run['seed']})\n")
    w(f"The main run's settings on another deal of the captures into {run['folds']} folds, with "
      f"other network seeds: `edge-etc evaluate --seed {run['seed']}`, "
      f"{run['seconds'] / 60:.0f} minutes. The design choices on this page were made on the main "
      f"run's folds (seed {main_seed}), so this run checks whether they hold on folds they were "
      "not chosen on."
      + (" The server port prior, the latest choice, was adopted after scratch runs on these "
         "folds too." if main_prior and run.get("port_prior") else "") + "\n")
    without_prior_note(w, run, main_prior)
    results_section(w, run)


def int8_score(run):
    """Return (the CNN-LSTM's int8 macro-F1, the best baseline's row) of a run's summary."""
    ensemble = run["cnn_lstm"].get("ensemble")
    name = f"CNN-LSTM int8, average of {ensemble['members']}" if ensemble else "CNN-LSTM int8"
    ours = next(r for r in run["summary"] if r["name"] == name)["macro_f1"]
    best = max((r for r in run["summary"] if not r["name"].startswith("CNN-LSTM")),
               key=lambda r: r["macro_f1"])
    return ours, best


def main():
    args = sys.argv[1:]
    options = {}
    other_paths = []
    while "--other-folds" in args:
        at = args.index("--other-folds")
        other_paths.append(args[at + 1])
        del args[at:at + 2]
    for option in ("--notes", "--store", "--stored", "--averages", "--ablation-reference"):
        if option in args:
            at = args.index(option)
            options[option] = args[at + 1]
            del args[at:at + 2]
    notes = options.get("--notes")
    if "--stored" in options:
        stored = options["--stored"]
        with open(os.path.join(stored, "index.json")) as f:
            ablations = [(name, os.path.join(stored, file)) for name, file in json.load(f)]
        args = [os.path.join(stored, "main.json")]
        if os.path.exists(os.path.join(stored, "averages.json")):
            options["--averages"] = os.path.join(stored, "averages.json")
        # In seed order, so the page does not depend on the directory listing.
        found = [name for name in os.listdir(stored)
                 if name.startswith("other-folds-seed-") and name.endswith(".json")]
        other_paths = [os.path.join(stored, name)
                       for name in sorted(found, key=lambda n: int(n[len("other-folds-seed-"):-5]))]
        if os.path.exists(os.path.join(stored, "ablation-reference.json")):
            options["--ablation-reference"] = os.path.join(stored, "ablation-reference.json")
    else:
        ablations = [arg.split("=", 1) for arg in args[1:]]
    ev = load(args[0])
    averages = trim_averages_run(load(options["--averages"])) if "--averages" in options else None
    other_folds = [trim_averages_run(load(path)) for path in other_paths]
    # The main settings' run the ablations were paired with, when the main run is newer.
    reference = load(options["--ablation-reference"]) if "--ablation-reference" in options else None
    if "--store" in options:
        store(options["--store"], ev, ablations, averages, other_folds, reference)
    classes = list(ev["cnn_lstm"]["overall_float"]["classes"])
    out = []
    w = out.append
    w("# Model evaluation\n")
    w("Grouped cross-validation of the CNN-LSTM on the edge-etc corpus (186 captures, 10 classes), "
      "beside simple baselines, with ablations. Generated by `docs/make_evaluation_page.py` from "
      "the output of `edge-etc evaluate`.\n")
    w("## Protocol\n")
    w(f"- {ev['folds']} folds made of whole capture files: each class's captures are shuffled (seed "
      f"{ev['seed']}) and dealt round-robin, so no capture is on both sides of a split.")
    w(f"- Training: {ev['epochs']} epochs on the other folds; 15% of their captures are held out for "
      "the unknown threshold. Weighting: " + ev["weighting"] + ".")
    members = ev.get("members", 1)
    if members > 1:
        w(f"- Every network is an average of {members} member networks, each trained on its own "
          "with its own seed and validation captures; its output is the mean of the members' "
          "class probabilities. A training repeat trains all the members.")
    decision = ("the class probabilities of a flow's first window" if ev["max_windows"] == 1 else
                f"the mean class probabilities of a flow's first {ev['max_windows']} windows")
    w(f"- Scores are per **flow**: the runner's decision, {decision}. Flows labelled `background` "
      "or `unknown` in the corpus are scored apart. Macro-F1 averages the F1 of the classes present.")
    repeats = ev.get("repeats", 1)
    if repeats > 1:
        w(f"- Every network (the CNN-LSTM and the one-packet CNN) is trained {repeats} times per fold "
          "with different seeds (weights, batch order and inner validation captures); the folds stay "
          "the same. A network's figure is the mean over the repeats of its macro-F1 over all "
          "folds; each repeat's figure is listed beside it, and each fold's figure is that fold's "
          "mean over the repeats. The per-class tables and the confusion matrix pool the flows of "
          "all repeats. The random forests run once per repeat too, with the same seeds; the port "
          "table has no seed and runs once.")
    ensemble = ev["cnn_lstm"].get("ensemble")
    if ensemble:
        n = ensemble["members"]
        w(f"- **Average of {n}** (the bundled model's design, `edge-etc train --members {n}`): per "
          f"fold, the networks of {n} consecutive repeats ({groups_text(ensemble)}) are combined "
          "into one model whose output is the mean of their class probabilities. That model is "
          "converted to int8 as a whole, with one output per network, and the runner's code "
          "averages those outputs, as it does for the bundled model. Its unknown threshold "
          "is chosen on the validation flows, each scored by the networks that did not train on "
          "its capture. An average's figure is the mean over the averages, each listed beside "
          "it. For a fair comparison, the baselines with a seed are averaged the same way: the "
          f"{n} forests of each fold (so {n * 200} trees), and the {n} one-packet CNNs.")
    forests = [(name, ev[key]["min_samples_leaf"]) for key, name in
               (("stats", "without"), ("stats_port", "with")) if "min_samples_leaf" in ev.get(key, {})]
    if forests:
        # Runs before these two keys were recorded used the same grid and inner folds.
        grid = ev["stats_port"].get("leaf_sizes", [2, 5, 10, 20, 50])
        inner = ev["stats_port"].get("inner_folds", 3)
        w("- Random forests: 200 trees on each window's payload sizes, directions, gaps and TCP "
          "flags, their mean and spread, and the server port's number for the forest with the "
          "port. Each fold's minimum leaf size is chosen on its training captures alone: every "
          "size of " + ", ".join(str(v) for v in grid) + " is scored by flow macro-F1 on "
          f"{inner} grouped folds of those captures. Chosen per fold: " +
          "; ".join(f"{' '.join(str(v) for v in leaves)} {name} the port" for name, leaves in forests) + ".")
    if ev.get("port_prior"):
        w("- Server port prior (`edge-etc train` stores it in the model): each fold's networks "
          "are scored with the class mix of the labelled flows of that fold's training captures "
          "on each server port multiplied into their class probabilities (edge_etc/port_prior.py). "
          "For the unknown threshold, each validation capture's flows are scored with the prior "
          "of the other training captures. The one-packet CNN gets it too. The port table and "
          "the forests run without it, and the forest with the port reads the port's number.")
    w("- int8: each fold's model is quantized with `edge-etc convert`'s code and run through the "
      "runner's own classifier (ai-edge-litert).")
    w(f"- Settings: `{json.dumps({k: v for k, v in ev['settings'].items() if k not in ('format', 'version')})}`\n")
    w("## Results against the baselines\n")
    product, subject = results_section(w, ev)
    for run in other_folds:
        ours, best = int8_score(run)
        margin_verdict = "is met" if ours >= best["macro_f1"] + 0.05 else "is not met"
        w(f"**On other folds (seed {run['seed']}, section below) the 5-point margin {margin_verdict}:** the "
          f"same design scores {ours:.3f} int8 there, and the best baseline, {best['name']}, "
          f"{best['macro_f1']:.3f}.\n")
    if ensemble:
        single = ev["cnn_lstm"]
        single_diffs = [abs(a["macro_f1"] - b["macro_f1"]) for a, b in zip(single["float"], single["int8"])]
        single_int8 = next(r for r in ev["summary"] if r["name"] == "CNN-LSTM int8")["macro_f1"]
        w(f"One network alone scores {single_int8:.3f} int8 (mean of the {repeats} repeats), and its int8 "
          f"and float forms differ by up to {max(single_diffs):.3f} on a fold.\n")
    several = ensemble and len(ensemble.get("groups", [])) > 1
    pooled = (", all folds and averages" if several else
              ", all folds" if ensemble or repeats == 1 else ", all folds and repeats")
    w(f"### {subject[4:]}, per class (flows{pooled})\n")
    w(per_class_table(product["overall_int8"]))
    w("")
    w(f"### Confusion matrix (float, flows{pooled})\n")
    w(confusion_table(product["overall_float"], classes))
    w("\n![confusion matrix](evaluation/confusion_float.png)\n")
    w("### Server port baseline, per class\n")
    w(per_class_table(ev["port"]["overall"]))
    w("")
    if "by_application" in ev["cnn_lstm"]:
        application_section(w, ev, repeats)
    depth_section(w, ev)
    bg = product["background"]
    runs = len(ensemble.get("groups", [0])) if ensemble else repeats
    noun = "average" if ensemble else "repeat"
    total = sum(b["flows"] for b in bg)
    wrong = sum(b["confident_wrong"] for b in bg)
    rejected = sum(b["known_rejected"] for b in bg)
    w("## Flows the model does not know\n")
    w(f"The corpus's `background` and `unknown` flows ({total // runs} flows with a complete window"
      f"{f', counted once per {noun}: {total}' if runs > 1 else ''}) are not "
      "training targets. Per fold, the threshold under which the runner reports `unknown` is the "
      "highest that rejects at most 5% of correctly classified validation flows "
      f"(thresholds: {', '.join(str(b['threshold']) for b in bg)}). At those thresholds "
      f"{wrong} of {total} background flows ({wrong / total:.0%}) still get a confident label, and "
      f"{rejected} labelled test flows are turned into `unknown`.\n")
    if averages:
        averages_section(w, averages, ensemble, ev.get("port_prior"))
    for run in other_folds:
        other_folds_section(w, run, ev["seed"], ev.get("port_prior"))
    if ablations:
        runs = [(name, load(path)) for name, path in ablations]
        paired = min((a.get("repeats", 1) for _, a in runs), default=ev.get("repeats", 1))
        paired_run = reference or ev
        w("## Ablations\n")
        w("Each row changes one thing against the main settings; CNN-LSTM float, no baselines, same "
          "folds, with the repeats given in the table. The flow macro-F1 is the mean of the "
          "networks' scores; the last column scores, per fold, averages of the networks of "
          "consecutive repeats, as the bundled model does (the mean over the averages, each in "
          "brackets when there are several)."
          + (f" The first row is the {'earlier ' if reference else ''}main run's first {paired} "
             "repeats, which have the ablations' seeds." if paired < paired_run.get("repeats", 1) else "")
          + (" The ablations and that row predate the server port prior, so their networks are "
             "scored without it." if ev.get("port_prior") and not paired_run.get("port_prior") else "")
          + "\n")
        w("| ablation | flags | repeats | flow macro-F1 | per repeat | per fold | averages of networks |")
        w("| --- | --- | --- | --- | --- | --- | --- |")

        def ablation_row(name, flags, run):
            row = next(r for r in run["summary"] if r["name"] == "CNN-LSTM float")
            average = next((r for r in run["summary"]
                            if r["name"].startswith("CNN-LSTM float, average")), None)
            per_repeat = row.get("repeat_macro_f1") or [row["macro_f1"]]
            spread = " ".join(f"{v:.3f}" for v in per_repeat) if len(per_repeat) > 1 else "(one run)"
            w(f"| {name} | {flags} | {run.get('repeats', 1)} | {row['macro_f1']:.3f} | {spread} | "
              f"{' '.join(f'{v:.3f}' for v in row['fold_macro_f1'])} | "
              f"{'' if average is None else average_cell(average)} |")

        if reference is not None:
            ablation_row(f"main settings, repeats 0-{paired - 1}", "(none)",
                         first_repeats(reference, paired, averages))
        elif paired < ev.get("repeats", 1):
            ablation_row(f"main settings, repeats 0-{paired - 1}", "(none)",
                         first_repeats(ev, paired, averages))
        else:
            ablation_row("main settings", "(none)", ev)
        for name, a in runs:
            ablation_row(name, f"`{a.get('flags', '')}`", a)
        w("")
    if notes:
        with open(notes) as f:
            w(f.read().rstrip() + "\n")
    w("## Reproduce\n")
    w("```sh")
    w("export EDGE_ETC_CORPUS=/path/to/corpus")
    w("edge-etc evaluate -o evaluation                      # main run: baselines and int8")
    if averages:
        n = averages["average_size"]
        w(f"edge-etc evaluate -o averages-of-{n} --repeats {averages['repeats']} --average-size {n}")
    for run in other_folds:
        w(f"edge-etc evaluate -o seed-{run['seed']} --seed {run['seed']}")
    for name, path in ablations:
        a = load(path)
        int8 = "" if "overall_int8" in a.get("cnn_lstm", {}) else " --no-int8"
        w(f"edge-etc evaluate -o ablation-{name.replace(' ', '-')} {a.get('flags', '')} "
          f"--repeats {a.get('repeats', 1)} --no-baselines{int8}")
    w("python docs/make_evaluation_page.py evaluation 'NAME=ablation-DIR' ... "
      + (f"--averages averages-of-{averages['average_size']} " if averages else "")
      + "".join(f"--other-folds seed-{run['seed']} " for run in other_folds)
      + "--notes docs/evaluation/findings.md --store docs/evaluation/runs > docs/EVALUATION.md")
    w("# or again from the runs stored in the repository:")
    w("python docs/make_evaluation_page.py --stored docs/evaluation/runs "
      "--notes docs/evaluation/findings.md > docs/EVALUATION.md")
    w("```\n")
    m = ev.get("machine")
    if m:
        machine = (f"{m['cores']}-core {m['arch']} ({m['cpu']}), {m['python']}, TensorFlow "
                   f"{m['tensorflow']} (CPU), numpy {m['numpy']}")
    else:  # runs from before evaluate recorded its machine
        machine = "not recorded by this run"
    total = ev["seconds"] + sum(run["seconds"] for run in [averages, *other_folds] if run)
    total += sum(load(p)["seconds"] for _, p in ablations)
    w(f"Machine: {machine}. The main run took {ev['seconds'] / 60:.0f} minutes; the whole page, "
      f"main run{', averages' if averages else ''}{', other folds' if other_folds else ''} and "
      f"ablations, took {total / 60:.0f} "
      "minutes. `edge-etc evaluate --preset ci` is the small version "
      "(2 folds, 2 epochs, 30 captures, 2 repeats) for CI.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
