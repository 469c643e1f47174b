"""`embedlake classify OUTPUT --table T --labels-column L`: how well each vector column predicts a label
(cross-validated logistic regression, against a TF-IDF baseline), and with --predict labels for the rest.
Options are ClassifyJob's fields (pipelines/commands/options.py), which hold the defaults."""

from __future__ import annotations

import argparse

from pipelines.commands.options import add_reader_options, job_from_args, name_list


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "classify",
        job="pipelines.classify:ClassifyJob",
        help="embeddings as classifier features: accuracy and macro-F1 per column; --predict writes T_predictions",
        description="Class-balanced logistic regression (scikit-learn, MTEB's classification protocol) on each "
        "stored vector column, scored by stratified k-fold cross-validation, against TF-IDF + the same "
        "classifier on the texts when the table keeps them. --predict fits the best column on the labelled "
        "rows and writes T_predictions (id, label, probability) for the unlabelled ones, scored by Ray "
        "workers. The JSON and a PNG go to OUTPUT/T.classification.{json,png} (or --report).",
    )
    add_reader_options(parser, table_required=True, ray=True)
    parser.add_argument("--labels-column", required=True, help="kept column of labels (embed --keep-columns); "
                                                               "null or empty = unlabelled")
    parser.add_argument("--columns", type=name_list, help="vector columns to score (default: every dense column)")
    parser.add_argument("--folds", type=int, help="stratified cross-validation folds")
    parser.add_argument("--seed", type=int, help="folds, sampling and the classifier")
    parser.add_argument("--max-iter", type=int, help="logistic regression iterations (MTEB: 100)")
    parser.add_argument("--max-rows", type=int, help="labelled rows to learn from; a seeded uniform sample beyond")
    parser.add_argument("--text-column", help="texts for the TF-IDF baseline, when kept")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the TF-IDF baseline")
    parser.add_argument("--predict", action="store_true",
                        help="label the unlabelled rows with the best column's classifier: T_predictions")
    parser.add_argument("--report", help="JSON report path (the PNG goes next to it)")
    return parser


def run(args: argparse.Namespace) -> dict:
    from pipelines.classify import ClassifyJob, run_classify

    return run_classify(job_from_args(ClassifyJob, args))
