"""Training: corpus readers, the time split, determinism, the `milter train` command, metrics."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

import numpy as np
import onnx
import pytest

from milter.cli import main
from milter.model import load_model
from milter.text import message_text
from milter.training import metrics
from milter.training.corpus import (
    HAM,
    SPAM,
    LabelledMessage,
    load_labelled,
    order_of,
    read_messages,
    received_time,
    time_split,
)
from milter.training.synthetic import make_message, write_corpus
from milter.training.train import Tokens, TrainConfig, train, vocabulary_of
from milter.words import DATE_WORDS, FUNCTION_WORDS, LANGUAGE_WORDS, REGISTER_WORDS


def test_reads_a_directory_of_files_in_a_stable_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b").write_bytes(b"Subject: b\n\nb")
    (tmp_path / "a").write_bytes(b"Subject: a\n\na")
    (tmp_path / "sub" / "c").write_bytes(b"Subject: c\n\nc")
    (tmp_path / ".hidden").write_bytes(b"ignored")
    found = list(read_messages(tmp_path))
    assert [Path(name).name for name, _ in found] == ["a", "b", "c"]
    assert found[0][1] == b"Subject: a\n\na"


def test_reads_a_maildir(tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for i in range(3):
        box.add(make_message(i, spam=False))
    (tmp_path / "Maildir" / "tmp" / "partial").write_bytes(b"half a messa")
    found = list(read_messages(tmp_path / "Maildir"))
    assert len(found) == 3
    assert sorted(raw.split(b"\n", 1)[0] for _, raw in found) == sorted(
        make_message(i, spam=False).split(b"\n", 1)[0] for i in range(3)
    )


def test_reads_an_mbox(tmp_path: Path) -> None:
    box = mailbox.mbox(tmp_path / "mail.mbox", create=True)
    for i in range(4):
        box.add(make_message(i, spam=True))
    box.close()
    found = list(read_messages(tmp_path / "mail.mbox"))
    assert [name for name, _ in found] == [f"{tmp_path / 'mail.mbox'}:{i}" for i in range(4)]
    assert all(b"Subject:" in raw for _, raw in found)


def test_a_single_file_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "one.eml"
    path.write_bytes(b"From someone Mon Jan  1 00:00:00 2007\nSubject: x\n\nbody\n")
    assert list(read_messages(path)) == [(str(path), path.read_bytes())]


def test_order_uses_trec_numbers_then_received_then_date() -> None:
    assert order_of("/x/trec07p.inmail.42", b"") == (0, 42.0)
    received = (
        b"Received: from a by b; Tue, 1 Jan 2002 00:00:10 +0000\nDate: Mon, 1 Jan 2001 00:00:00 +0000\n\n"
    )
    assert received_time(received) == 1009843210.0
    date_only = b"Date: Mon, 1 Jan 2001 00:00:00 +0000\n\n"
    assert order_of("/x/easy_ham.0001", date_only) == (1, 978307200.0)
    assert order_of("/x/nodate", b"Subject: x\n\n") == (1, 0.0)


def labelled(group: str, label: int, order: float) -> LabelledMessage:
    return LabelledMessage(f"{group}/{order}", label, group, (1, order), b"")


def test_time_split_is_per_group_and_latest_last() -> None:
    messages = [labelled("a", i % 2, i) for i in range(100)] + [
        labelled("b", i % 2, 1000 - i) for i in range(20)
    ]
    train_ix, cal_ix, val_ix = time_split(messages, 0.1, 0.2)
    assert len(train_ix) + len(cal_ix) + len(val_ix) == 120
    assert {messages[i].group for i in val_ix} == {"a", "b"}
    for group in ("a", "b"):
        latest_train = max(messages[i].order for i in train_ix if messages[i].group == group)
        earliest_cal = min(messages[i].order for i in cal_ix if messages[i].group == group)
        earliest_val = min(messages[i].order for i in val_ix if messages[i].group == group)
        latest_cal = max(messages[i].order for i in cal_ix if messages[i].group == group)
        assert latest_train < earliest_cal <= latest_cal < earliest_val
    assert sum(messages[i].group == "a" for i in val_ix) == 20


def test_groups_are_the_parents_of_the_paths(tmp_path: Path) -> None:
    ham, spam = write_corpus(tmp_path / "corpus", ham=3, spam=2)
    found = list(load_labelled([ham], [spam]))
    assert [m.label for m in found] == [HAM] * 3 + [SPAM] * 2
    assert {m.group for m in found} == {str((tmp_path / "corpus").resolve())}


def test_training_is_deterministic_and_validates_on_later_mail(tmp_path: Path) -> None:
    ham, spam = write_corpus(tmp_path, ham=80, spam=80)
    config = TrainConfig(min_df=1, seed=3)
    first = train([ham], [spam], config, "cmd")
    second = train([ham], [spam], config, "cmd")
    assert first.model_bytes == second.model_bytes
    counts = json.loads(first.metadata["milter.counts"])
    assert counts["validation"] == {"ham": 8, "spam": 8}
    assert counts["calibration"] == {"ham": 8, "spam": 8}
    assert counts["train"] == {"ham": 64, "spam": 64}
    # Refitted on training + calibration mail by default; never on validation mail.
    assert counts["fitted_on"] == {"ham": 72, "spam": 72}
    dates = json.loads(first.metadata["milter.dates"])
    assert dates["train"][tmp_path.name][0] < dates["validation"][tmp_path.name][0]
    figures = first.figures["all"]
    assert isinstance(figures, dict) and figures["auc"] > 0.9
    assert first.figures["onnx_vs_sklearn_max_abs_diff"] < 1e-4  # type: ignore[operator]


def test_without_refit_the_weights_are_those_of_the_training_slice(tmp_path: Path) -> None:
    ham, spam = write_corpus(tmp_path, ham=80, spam=80)
    refitted = train([ham], [spam], TrainConfig(min_df=1), "cmd")
    kept = train([ham], [spam], TrainConfig(min_df=1, refit=False), "cmd")
    assert json.loads(kept.metadata["milter.counts"])["fitted_on"] == {"ham": 64, "spam": 64}
    assert "refitted" not in kept.metadata["milter.model_kind"]
    assert "refitted" in refitted.metadata["milter.model_kind"]
    # The same calibration (fitted on the calibration slice with the first weights) in both.
    assert kept.fitted.platt == refitted.fitted.platt
    assert kept.model_bytes != refitted.model_bytes


def test_excluded_token_families_get_no_weight(tmp_path: Path) -> None:
    ham, spam = write_corpus(tmp_path, ham=40, spam=40)
    # Every spam says which mail client sent it: a perfect feature, unless it is excluded.
    for path in spam.iterdir():
        path.write_bytes(b"X-Mailer: Blaster 3.0\r\n" + path.read_bytes())
    kept = train([ham], [spam], TrainConfig(min_df=1, exclude_prefixes=()), "cmd")
    assert "mailer:blaster" in kept.fitted.vectorizer.vocabulary_  # type: ignore[attr-defined]
    result = train([ham], [spam], TrainConfig(min_df=1), "cmd")
    assert TrainConfig().exclude_prefixes == ("mailer:",)
    vocabulary = result.fitted.vectorizer.vocabulary_  # type: ignore[attr-defined]
    assert vocabulary and not any(term.startswith("mailer:") for term in vocabulary)
    path = tmp_path / "m.onnx"
    path.write_bytes(result.model_bytes)
    model = load_model(path)
    text = message_text(next(spam.iterdir()).read_bytes())
    assert "mailer:blaster" in text.split()
    assert model.score(text).probability == pytest.approx(
        model.score(text.replace("mailer:blaster", "")).probability, abs=1e-6
    )
    assert json.loads(model.metadata["milter.params"])["exclude_prefixes"] == ["mailer:"]


def test_the_tokenizer_leaves_out_excluded_words_and_families() -> None:
    tokens = Tokens(("mailer:",), frozenset(DATE_WORDS))
    text = "april mailer:outlook may meeting on friday mailerdaemon subj:april 12"
    assert tokens(text) == ["may", "meeting", "on", "mailerdaemon", "subj:april", "12"]
    assert Tokens()(text) == text.split()
    assert set(TrainConfig().exclude_words) == set(DATE_WORDS + LANGUAGE_WORDS + REGISTER_WORDS)
    assert len(TrainConfig().exclude_words) == len(set(TrainConfig().exclude_words))
    assert not {"the", "on", "me", "am", "per"} & set(LANGUAGE_WORDS)  # English words stay
    # English function words and "!" go from the body and the subject; content words stay.
    assert {"you", "we", "your", "!", "the"} <= set(FUNCTION_WORDS) and len(FUNCTION_WORDS) == 319
    assert {"subj:you", "subj:!", "you", "!"} <= set(REGISTER_WORDS)
    assert not {"free", "click", "money", "subj:free", "thanks", "lunch"} & set(REGISTER_WORDS)
    assert {"april", "friday", "dec"} <= set(DATE_WORDS) and "may" not in DATE_WORDS


def test_train_refuses_one_class_only(tmp_path: Path) -> None:
    ham, _ = write_corpus(tmp_path, ham=30, spam=0)
    with pytest.raises(ValueError, match="needs both ham and spam"):
        train([ham], [], TrainConfig(min_df=1), "cmd")


def test_train_command_writes_one_model_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ham, spam = write_corpus(tmp_path / "corpus", ham=60, spam=60)
    out = tmp_path / "models" / "spam.onnx"
    argv = ["train", "--ham", str(ham), "--spam", str(spam), "--out", str(out), "--seed", "1", "--quiet"]
    assert main([*argv, "--min-df", "1", "--max-features", "500"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(out) and report["bytes"] == out.stat().st_size
    assert [p.name for p in out.parent.iterdir()] == ["spam.onnx"]  # no temporary file left
    model = load_model(out)
    params = json.loads(model.metadata["milter.params"])
    assert params["seed"] == 1 and params["max_features"] == 500
    assert model.metadata["milter.command"].startswith("milter train ")
    libraries = json.loads(model.metadata["milter.libraries"])
    assert {"scikit-learn", "onnx", "onnxruntime", "numpy", "python"} <= set(libraries)
    onnx.checker.check_model(onnx.load(str(out)))


def test_train_command_options_for_refit_and_exclusions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ham, spam = write_corpus(tmp_path / "corpus", ham=40, spam=40)
    out = tmp_path / "m.onnx"
    argv = ["train", "--ham", str(ham), "--spam", str(spam), "--out", str(out), "--quiet", "--min-df", "1"]
    assert main(argv) == 0
    params = json.loads(load_model(out).metadata["milter.params"])
    assert params["refit"] is True and params["C"] == 100.0
    assert params["exclude_prefixes"] == ["mailer:"] and set(params["exclude_words"]) == set(
        DATE_WORDS + LANGUAGE_WORDS + REGISTER_WORDS
    )
    assert params["augment"] == ["outlook", "gmail", "service", "short"]
    figures = json.loads(capsys.readouterr().out)["figures"]
    assert set(figures["rewrapped"]) == {"outlook", "gmail", "service", "short"}  # validated rewrapped too
    assert figures["rewrapped"]["outlook"]["ham"] == figures["all"]["ham"]
    options = ["--no-refit", "--exclude-prefix", "--exclude-word", "hello", "world", "--augment", "gmail"]
    assert main([*argv, *options]) == 0
    model = load_model(out)
    params = json.loads(model.metadata["milter.params"])
    assert params["refit"] is False and params["augment"] == ["gmail"]
    assert params["exclude_prefixes"] == [] and params["exclude_words"] == ["hello", "world"]
    assert "refitted" not in model.metadata["milter.model_kind"]
    assert "rewrapped (gmail)" in model.metadata["milter.model_kind"]
    capsys.readouterr()
    assert main([*argv, "--augment"]) == 0
    assert json.loads(load_model(out).metadata["milter.params"])["augment"] == []
    assert "rewrapped" not in json.loads(capsys.readouterr().out)["figures"]
    # --exclude-token adds exact tokens to the default list; with --exclude-word, to that one.
    assert main([*argv, "--exclude-token", "hidden:chars-20", "hidden:spacer"]) == 0
    words = json.loads(load_model(out).metadata["milter.params"])["exclude_words"]
    assert set(words) == {*DATE_WORDS, *LANGUAGE_WORDS, *REGISTER_WORDS, "hidden:chars-20", "hidden:spacer"}
    assert main([*argv, "--exclude-word", "hello", "--exclude-token", "hidden:spacer"]) == 0
    assert json.loads(load_model(out).metadata["milter.params"])["exclude_words"] == [
        "hello",
        "hidden:spacer",
    ]


def test_rewrapped_copies_do_not_let_a_term_of_one_message_pass_min_df() -> None:
    tokens = Tokens()
    # Two messages, each with one copy (texts[j] is a version of message j % 2).
    texts = ["once shared", "twice shared", "once shared copyonly", "twice shared copyonly"]
    vocabulary = vocabulary_of(texts, 2, tokens, min_df=2, max_features=100)
    assert set(vocabulary) == {"shared", "copyonly"}  # "once" is in one message's two versions
    assert vocabulary_of(texts, 2, tokens, min_df=1, max_features=2) == {"copyonly": 0, "shared": 1}


def test_rewrapped_fitting_keeps_the_words_weight(tmp_path: Path) -> None:
    ham, spam = write_corpus(tmp_path, ham=60, spam=60)
    plain = train([ham], [spam], TrainConfig(min_df=2, augment=()), "cmd")
    augmented = train([ham], [spam], TrainConfig(min_df=2), "cmd")
    # The synthetic spam is wrapped as often in base64 HTML as the ham: the words decide, and
    # the copies change neither which words are learnt nor how well.
    assert augmented.fitted.vectorizer.vocabulary_.keys() >= plain.fitted.vectorizer.vocabulary_.keys() - {  # type: ignore[attr-defined]
        t
        for t in plain.fitted.vectorizer.vocabulary_
        if t.startswith(("msgid:", "cte:", "charset:", "mime:", "html:"))  # type: ignore[attr-defined]
    }
    assert augmented.figures["all"]["auc"] > 0.9  # type: ignore[index]


def test_train_command_reports_a_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "train",
        "--ham",
        str(tmp_path / "nope"),
        "--spam",
        str(tmp_path),
        "--out",
        str(tmp_path / "m.onnx"),
    ]
    assert main(argv) == 2
    assert "nope: no such file or directory" in capsys.readouterr().err


def test_metrics_on_a_known_example() -> None:
    y = np.array([0] * 1000 + [1] * 10)
    p = np.concatenate([np.linspace(0.0, 0.5, 1000), np.linspace(0.45, 1.0, 10)])
    # One ham above 0.499 -> at 0.1 % FPR the threshold may let one ham through.
    assert metrics.recall_at_fpr(y, p, 0.001) == pytest.approx(0.9)
    assert metrics.rates_at(y, p, 0.9) == (0.0, pytest.approx(0.2))
    perfect = metrics.figures([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0], [("spam", 0.9)])
    assert perfect["auc"] == 1.0 and perfect["ece"] == 0.0 and perfect["brier"] == 0.0
    assert perfect["threshold spam p>=0.9"] == {"ham_fpr": 0.0, "spam_recall": 1.0}
    table = metrics.reliability(np.array([0, 1, 1, 1]), np.array([0.05, 0.95, 0.95, 0.55]))
    assert table[0]["count"] == 1 and table[9]["count"] == 2 and table[5]["spam_rate"] == 1.0
    assert metrics.ece(np.array([0, 1]), np.array([0.5, 0.5])) == 0.0
    assert metrics.ece(np.array([0, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_evaluate_command_reports_figures_and_writes_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ham, spam = write_corpus(tmp_path / "corpus", ham=150, spam=150)
    model_path = tmp_path / "m.onnx"
    argv = [
        "train",
        "--ham",
        str(ham),
        "--spam",
        str(spam),
        "--out",
        str(model_path),
        "--quiet",
        "--min-df",
        "1",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    report = tmp_path / "report"
    argv = ["evaluate", "--ham", str(ham), "--spam", str(spam), "--model", str(model_path)]
    assert main([*argv, "--compare", "yardstick", "bogofilter", "--report", str(report), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "recall@0.1%" in table and "yardstick" in table and "bogofilter" in table
    data = json.loads((report / "report.json").read_text())
    names = [system["name"] for system in data["systems"]]
    assert names[0].startswith("milter (spam-") and names[1].startswith("yardstick")
    assert names[2].startswith("bogofilter")  # the real program (a Debian package the CI installs)
    ours = data["systems"][0]["figures"]
    assert ours["all"]["ham"] == 15 and ours["all"]["spam"] == 15  # the validation slice only
    assert {"threshold spam p>=0.9", "threshold suspicious p>=0.5"} <= set(ours["all"])
    assert ours["messages_per_second"] > 0
    assert len(data["reliability"]) == 10
    for name in ("roc.png", "histogram.png", "reliability.png"):
        assert (report / name).read_bytes().startswith(b"\x89PNG")


def test_evaluate_all_scores_every_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ham, spam = write_corpus(tmp_path / "corpus", ham=40, spam=40)
    model_path = tmp_path / "m.onnx"
    assert main(["train", "--ham", str(ham), "--spam", str(spam), "--out", str(model_path), "--quiet"]) == 0
    capsys.readouterr()
    assert (
        main(["evaluate", "--ham", str(ham), "--spam", str(spam), "--model", str(model_path), "--all"]) == 0
    )
    assert "ham    40 spam    40" in capsys.readouterr().out
    argv = ["evaluate", "--ham", str(ham), "--spam", str(spam), "--model", str(model_path), "--all"]
    assert main([*argv, "--rewrap", "--quiet"]) == 0
    table = capsys.readouterr().out
    for style in ("outlook", "gmail", "service", "short"):
        assert f"rewrapped {style}" in table  # the same 80 messages, scored again rewrapped
    assert table.count("ham    40 spam    40") == 2 * 5  # "all" and the collection, five times


def test_the_recorded_command_leaves_out_flags_that_do_not_shape_the_model() -> None:
    from milter.commands.train import _recorded_arguments

    argv = [
        "milter",
        "train",
        "--ham",
        "h",
        "--jobs",
        "2",
        "--spam",
        "s",
        "--quiet",
        "--jobs=3",
        "--seed",
        "0",
    ]
    assert _recorded_arguments(argv) == ["--ham", "h", "--spam", "s", "--seed", "0"]


def sourced_corpus(root: Path, sources: dict[str, tuple[int, int]]) -> tuple[Path, Path]:
    """A many-source collection: files named <source>.<n>.eml under ham/ and spam/."""
    ham, spam = root / "many" / "ham", root / "many" / "spam"
    ham.mkdir(parents=True)
    spam.mkdir(parents=True)
    for s, name in enumerate(sorted(sources)):
        n_ham, n_spam = sources[name]
        # Ham and spam spread over the same stretch of time (make_message dates by index).
        for i in range(n_ham):
            (ham / f"{name}.{i:05d}.eml").write_bytes(
                make_message(1000 * s + 2 * (i * 450 // n_ham), spam=False)
            )
        for i in range(n_spam):
            (spam / f"{name}.{i:05d}.eml").write_bytes(
                make_message(1000 * s + 2 * (i * 450 // n_spam) + 1, spam=True)
            )
    return ham, spam


def test_each_source_of_a_many_source_collection_is_a_group(tmp_path: Path) -> None:
    ham, spam = sourced_corpus(tmp_path, {"list-a": (30, 10), "list-b": (20, 0), "dead-list": (0, 25)})
    found = list(load_labelled([ham], [spam]))
    collection = str((tmp_path / "many").resolve())
    assert {m.group for m in found} == {f"{collection}/{s}" for s in ("list-a", "list-b", "dead-list")}
    # Ham and spam of one source are one group: it is split by time and left out whole.
    assert {m.label for m in found if m.group.endswith("/list-a")} == {HAM, SPAM}
    _, _, val_ix = time_split(found, 0.1, 0.1)
    assert {found[i].group for i in val_ix} == {m.group for m in found}


def test_leave_one_source_out_never_trains_on_the_source_it_scores(tmp_path: Path) -> None:
    from milter.training.holdout import leave_one_source_out
    from milter.training.train import fit_calibrated

    ham, spam = sourced_corpus(tmp_path, {"list-a": (60, 40), "list-b": (60, 40), "dead-list": (0, 60)})
    messages = list(load_labelled([ham], [spam]))
    texts = [message_text(m.raw) for m in messages]
    config = TrainConfig(augment=(), min_df=1)
    sources = sorted({m.group for m in messages})
    held = leave_one_source_out(messages, texts, {}, config, sources, compare=("yardstick",))
    assert [h.source for h in held] == sources
    for h in held:
        mine = [m for m in messages if m.group == h.source]
        assert h.labels.tolist() == [m.label for m in mine]
        assert set(h.probabilities) == {"milter", "yardstick"}
        # The model for a source is the one fitted on all the other mail, exactly.
        others = [i for i, m in enumerate(messages) if m.group != h.source]
        fitted = fit_calibrated([messages[i] for i in others], [texts[i] for i in others], config)
        expected = fitted.fitted.probabilities(
            [texts[i] for i, m in enumerate(messages) if m.group == h.source]
        )
        assert np.allclose(h.probabilities["milter"], expected)


def test_leave_one_source_out_reads_other_calibration_weights_and_sources_from_the_same_fits(
    tmp_path: Path,
) -> None:
    from milter.training.holdout import leave_one_source_out, weight_key
    from milter.training.train import fit_calibrated, platt

    ham, spam = sourced_corpus(tmp_path, {"list-a": (60, 40), "list-b": (60, 40), "dead-list": (0, 60)})
    messages = list(load_labelled([ham], [spam]))
    texts = [message_text(m.raw) for m in messages]
    config = TrainConfig(augment=(), min_df=1)

    # A source drawn across groups: the first 20 ham of list-a, as --hard-ham draws hard_ham.
    first = {m.source for m in messages if m.group.endswith("/list-a") and m.label == HAM}
    first = set(sorted(first)[:20])

    def source_of(m: LabelledMessage) -> str:
        return "picked" if m.source in first else m.group

    [held] = leave_one_source_out(
        messages, texts, {}, config, ["picked"], source_of=source_of, calibration_ham_weights=(1.0, 3.0)
    )
    assert held.labels.tolist() == [HAM] * 20
    assert weight_key(3.0) == "milter@3"
    assert set(held.probabilities) == {"milter", "milter@1", "milter@3"}
    others = [i for i, m in enumerate(messages) if m.source not in first]
    fitted = fit_calibrated([messages[i] for i in others], [texts[i] for i in others], config)
    mine = [texts[i] for i, m in enumerate(messages) if m.source in first]
    assert np.allclose(held.probabilities["milter"], fitted.fitted.probabilities(mine))
    # The weight the config names gives the model itself; another weight, the other Platt fit.
    assert fitted.recalibrated(config.calibration_ham_weight).platt == fitted.fitted.platt
    assert fitted.recalibrated(3.0).platt == platt(fitted.cal_decision, fitted.cal_labels, 3.0)
    assert np.allclose(held.probabilities["milter@3"], fitted.recalibrated(3.0).probabilities(mine))
    # More ham weight in the calibration: every ham scores lower.
    assert held.probabilities["milter@3"].mean() < held.probabilities["milter@1"].mean()


def test_calibration_on_one_collection_uses_only_its_mail(tmp_path: Path) -> None:
    from milter.training.train import fit_calibrated, in_collections

    old_ham, old_spam = write_corpus(tmp_path / "old", ham=80, spam=80)
    new_ham, new_spam = sourced_corpus(tmp_path, {"list-a": (60, 30), "dead-list": (0, 40)})
    messages = list(load_labelled([old_ham, new_ham], [old_spam, new_spam]))
    texts = [message_text(m.raw) for m in messages]
    assert in_collections(messages[-1].group, ("many",)) and not in_collections(messages[0].group, ("many",))
    everywhere = fit_calibrated(messages, texts, TrainConfig(augment=()))
    on_new = fit_calibrated(messages, texts, TrainConfig(augment=(), calibrate_on=("many",)))
    assert everywhere.fitted.platt != on_new.fitted.platt
    with pytest.raises(ValueError, match="calibration slice of nowhere"):
        fit_calibrated(messages, texts, TrainConfig(augment=(), calibrate_on=("nowhere",)))


def test_source_weights_weigh_each_source_of_each_kind_alike_above_a_floor() -> None:
    from milter.training.train import SOURCE_FLOOR, source_weights

    keys = [("big", HAM)] * 400 + [("list", SPAM)] * 200 + [("tiny", SPAM)] * 2
    assert source_weights(keys, 0.0) is None
    weights = source_weights(keys, 1.0)
    assert weights is not None and weights.mean() == pytest.approx(1.0)
    big, small, tiny = weights[0], weights[400], weights[-1]
    # Each message of a source weighs 1 / its size: the sources weigh alike in all...
    assert 400 * big == pytest.approx(200 * small)
    # ...but a source of two weighs as if it had SOURCE_FLOOR messages, not as a whole list.
    assert tiny == pytest.approx(small * 200 / SOURCE_FLOOR)
    half = source_weights(keys, 0.5)
    assert half is not None and half[0] / half[400] == pytest.approx((200 / 400) ** 0.5)


def test_a_balanced_fit_lets_a_small_source_teach_its_own_words(tmp_path: Path) -> None:
    from milter.training.train import fit_calibrated

    ham, spam = sourced_corpus(tmp_path, {"big": (300, 300), "small": (0, 100)})
    for path in spam.glob("small.*.eml"):
        path.write_bytes(b"Reply-To: <offers@smallsource.example>\n" + path.read_bytes())
    messages = list(load_labelled([ham], [spam]))
    texts = [message_text(m.raw) for m in messages]
    marker = "replytodom:smallsource.example"

    def weight_of(balance: float) -> float:
        fitted = fit_calibrated(
            messages, texts, TrainConfig(augment=(), min_df=1, source_balance=balance)
        ).fitted
        column = fitted.vectorizer.vocabulary_[marker]  # type: ignore[attr-defined]
        return float(fitted.classifier.coef_[0][column])  # type: ignore[attr-defined]

    # The small source's 100 spam weigh as much as the big source's 300 once balanced.
    assert weight_of(1.0) > weight_of(0.0) > 0


def test_train_command_records_the_source_balance(tmp_path: Path) -> None:
    ham, spam = write_corpus(tmp_path / "corpus", ham=40, spam=40)
    out = tmp_path / "m.onnx"
    argv = ["train", "--ham", str(ham), "--spam", str(spam), "--out", str(out), "--quiet", "--min-df", "1"]
    assert main([*argv, "--source-balance", "0.5", "--min-sources", "1"]) == 0
    params = json.loads(load_model(out).metadata["milter.params"])
    assert params["source_balance"] == 0.5 and params["min_sources"] == 1
    assert "sources weighed alike (^-0.5)" in load_model(out).metadata["milter.model_kind"]


def test_min_sources_keeps_only_terms_more_than_one_source_uses() -> None:
    tokens = Tokens()
    texts = ["shared onlya", "shared onlya", "shared onlyb", "shared"]
    sources = ["a", "a", "b", "c"]
    everything = vocabulary_of(texts, 4, tokens, min_df=1, max_features=100)
    assert set(everything) == {"shared", "onlya", "onlyb"}
    # "onlya" is in two messages, but both are of one source: it says which source, not spam.
    assert set(vocabulary_of(texts, 4, tokens, 1, 100, sources, min_sources=2)) == {"shared"}
    assert set(vocabulary_of(texts, 4, tokens, 1, 100, sources, min_sources=3)) == {"shared"}
    assert set(vocabulary_of(texts, 4, tokens, 1, 100, sources, min_sources=4)) == set()


def test_a_model_trained_with_min_sources_knows_no_word_of_one_source_alone(tmp_path: Path) -> None:
    from milter.training.train import fit_calibrated

    ham, spam = sourced_corpus(tmp_path, {"list-a": (40, 40), "list-b": (40, 40)})
    for path in spam.glob("list-a.*.eml"):
        path.write_bytes(b"Reply-To: <offers@onlya.example>\n" + path.read_bytes())
    messages = list(load_labelled([ham], [spam]))
    texts = [message_text(m.raw) for m in messages]
    for augment in ((), ("gmail",)):  # the vocabulary is built either way
        config = TrainConfig(augment=augment, min_df=1, min_sources=2)
        rewrapped = {"gmail": texts} if augment else None
        vocabulary = fit_calibrated(
            messages, texts, config, rewrapped=rewrapped
        ).fitted.vectorizer.vocabulary_  # type: ignore[attr-defined]
        assert "replytodom:onlya.example" not in vocabulary
        assert "mime:text/plain" in vocabulary
    plain = fit_calibrated(messages, texts, TrainConfig(augment=(), min_df=1)).fitted.vectorizer.vocabulary_  # type: ignore[attr-defined]
    assert "replytodom:onlya.example" in plain


def test_a_clipped_model_bounds_every_tokens_share_in_the_graph_as_in_the_fit(tmp_path: Path) -> None:
    from milter.model import model_from_bytes

    ham, spam = write_corpus(tmp_path, ham=80, spam=80)
    plain = train([ham], [spam], TrainConfig(min_df=1, seed=3), "cmd")
    clipped = train([ham], [spam], TrainConfig(min_df=1, seed=3, clip=0.05), "cmd")
    # The ONNX graph computes what the fit computed, clipped or not.
    assert clipped.figures["onnx_vs_sklearn_max_abs_diff"] < 1e-4  # type: ignore[operator]
    assert json.loads(clipped.metadata["milter.params"])["clip"] == 0.05
    # Without a clip the setting is not recorded: such a model is the file it was before.
    assert "clip" not in json.loads(plain.metadata["milter.params"])
    plain_model = model_from_bytes(plain.model_bytes, "plain.onnx")
    model = model_from_bytes(clipped.model_bytes, "clipped.onnx")
    # No explained token weighs more than the clip, in calibrated log-odds.
    bound = 0.05 * clipped.fitted.platt[0] + 1e-5
    for text in clipped.validation_texts[:20]:
        assert all(abs(weight) <= bound for _, weight in model.score_texts([text])[0].features)
    # One token alone moves the score by the clip at most: the strongest spam word alone.
    vocabulary = plain.fitted.vectorizer.vocabulary_  # type: ignore[attr-defined]
    coef = plain.fitted.classifier.coef_[0]  # type: ignore[attr-defined]
    strongest = max(vocabulary, key=lambda term: coef[vocabulary[term]])
    alone = model.score_texts([strongest])[0].features
    assert len(alone) == 1 and abs(alone[0][1] - 0.05 * clipped.fitted.platt[0]) < 1e-4
    assert plain_model.score_texts([strongest])[0].features[0][1] > alone[0][1]


def test_a_fused_model_adds_naive_bayes_log_odds_in_the_graph_as_in_the_fit(tmp_path: Path) -> None:
    from sklearn.naive_bayes import BernoulliNB

    from milter.errors import ModelError
    from milter.model import model_from_bytes
    from milter.retrain import Fitted, RetrainConfig, features, fit, model_bytes, read_linear
    from milter.text import TEXT_VERSION
    from milter.training.train import Fused, naive_bayes_weights

    ham, spam = write_corpus(tmp_path, ham=80, spam=80)
    plain = train([ham], [spam], TrainConfig(min_df=1, seed=3), "cmd")
    fused = train([ham], [spam], TrainConfig(min_df=1, seed=3, fuse_nb=0.3), "cmd")
    # The ONNX graph computes what the fit computed; the setting is recorded only where set.
    assert fused.figures["onnx_vs_sklearn_max_abs_diff"] < 1e-4  # type: ignore[operator]
    assert json.loads(fused.metadata["milter.params"])["fuse_nb"] == 0.3
    assert "fuse_nb" not in json.loads(plain.metadata["milter.params"])
    classifier = fused.fitted.classifier
    assert isinstance(classifier, Fused) and classifier.beta == 0.3
    texts = fused.validation_texts
    assert not np.allclose(plain.fitted.probabilities(texts), fused.fitted.probabilities(texts))
    # The weights are Bernoulli naive Bayes's own log-odds, as scikit-learn computes them.
    x = fused.fitted.vectorizer.transform(texts)  # type: ignore[attr-defined]
    labels = np.array([0, 1] * (len(texts) // 2) + [0] * (len(texts) % 2))
    weight, intercept = naive_bayes_weights(x, labels, None)
    presence = x.copy().tocsr()
    presence.data[:] = 1.0
    joint = BernoulliNB(alpha=1.0, binarize=None).fit(presence, labels).predict_joint_log_proba(presence)
    assert np.allclose(presence @ weight + intercept, joint[:, 1] - joint[:, 0], atol=1e-8)
    # Site retraining reads a fused graph back: the same weights give the same model, and a
    # correction is fitted on top of the naive Bayes part, which stays a fixed offset.
    base = read_linear(fused.model_bytes, "fused.onnx")
    assert base.naive_bayes is not None and base.naive_bayes.bound > 0  # beta x the fit's bound, calibrated
    unchanged = Fitted(list(base.terms), base.idf, base.coef, base.intercept, 0, 0, 0)
    rebuilt = model_from_bytes(model_bytes(unchanged, base, {"milter.text_version": TEXT_VERSION}), "rebuilt")
    assert np.allclose(
        [s.probability for s in rebuilt.score_texts(texts)], fused.fitted.probabilities(texts), atol=1e-4
    )
    # The offset the correction is fitted on is the graph's own log-odds.
    # (Whole synthetic messages score 0 or 1; their first tokens alone are less certain.)
    heads = [" ".join(text.split()[:n]) for text in texts for n in (1, 2, 3)]
    graph_p = np.array([s.probability for s in rebuilt.score_texts(heads)], dtype=np.float64)
    offset = features(heads, base.index, base.idf) @ base.coef + base.intercept + base.fixed_log_odds(heads)
    assert np.allclose(1.0 / (1.0 + np.exp(-offset)), graph_p, atol=1e-4)
    assert ((graph_p > 0.01) & (graph_p < 0.99)).any() and np.abs(base.fixed_log_odds(heads)).max() > 0.1
    taught = texts[:20]
    labels = np.zeros(len(taught), dtype=np.int64)  # the site wants all of these
    corrected = fit(base, taught, labels, RetrainConfig())
    site = model_from_bytes(model_bytes(corrected, base, {"milter.text_version": TEXT_VERSION}), "site")
    assert max(s.probability for s in site.score_texts(taught)) < 0.5
    assert "nb_table" in {
        t.name for t in onnx.load_from_string(model_bytes(corrected, base, {})).graph.initializer
    }
    # Anything else is refused by name, not misread.
    with pytest.raises(ModelError, match=r"other\.onnx.*expected a milter model file"):
        read_linear(b"junk", "other.onnx")


def test_a_model_is_clipped_or_fused_not_both(tmp_path: Path) -> None:
    ham, spam = write_corpus(tmp_path, ham=40, spam=40)
    with pytest.raises(ValueError, match="not both"):
        train([ham], [spam], TrainConfig(min_df=1, clip=1.0, fuse_nb=0.3), "cmd")


def test_milter_train_fuse_nb_writes_a_fused_model(tmp_path: Path) -> None:
    ham, spam = write_corpus(tmp_path, ham=40, spam=40)
    out = tmp_path / "fused.onnx"
    args = ["train", "--ham", str(ham), "--spam", str(spam), "--out", str(out), "--quiet", "--fuse-nb", "0.2"]
    assert main(args) == 0
    model = onnx.load(str(out))
    assert "nb_table" in {tensor.name for tensor in model.graph.initializer}
    assert json.loads({p.key: p.value for p in model.metadata_props}["milter.params"])["fuse_nb"] == 0.2
    assert 0.0 <= load_model(out).score(message_text(make_message(1, spam=True))).probability <= 1.0
