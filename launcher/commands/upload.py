"""`upload SRC`: sync local session folders to the data bucket (replaces `aws s3 sync`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_aws_args, command_parser, connect

EXAMPLES = """
python -m launcher upload ~/data/hdf5_data_final                       # → s3://<data bucket>/data/<session>/...
python -m launcher upload ~/data/hdf5_data_diphone_encoded --prefix diphone
python -m launcher start --config rnn_args_diphone_sagemaker.yaml --data-prefix diphone
python -m launcher upload ~/data/hdf5_data_final --dry-run
"""


def add_parser(sub) -> None:
    p = command_parser(
        sub, "upload", "sync local session folders to the data bucket", EXAMPLES,
        "Upload SRC/<session>/data_train.hdf5 and data_val.hdf5 (nothing else: other files are listed as "
        "skipped) to the stack's data bucket under its data prefix. Each file's HDF5 layout is checked first "
        "with the trainer's own index (a damaged or truncated file is refused and nothing is sent); files "
        "already there unchanged (same size and MD5) are skipped; parallel multipart transfers with a progress bar. "
        "Each file's trial index goes beside it (<file>.b2t-index.json), so a job fetches its first batches' "
        "trials before the rest of the files",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="folder holding the session folders")
    p.add_argument("--prefix", default="", metavar="P", help="a sub-folder under the data prefix")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    add_aws_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from launcher import s3sync
    from launcher.aws import aws_errors
    from launcher.errors import UsageError

    if not args.src.is_dir():
        raise UsageError(f"{args.src} is not a folder")
    files, skipped = s3sync.session_files(args.src)
    if not files:
        raise UsageError(f"{args.src} holds no <session>/data_train.hdf5 or data_val.hdf5 files")
    for path in skipped:
        print(f"skipped (not <session>/data_train.hdf5 or data_val.hdf5): {path}")
    indexes = check_layout(files)
    aws, outputs = connect(args)
    url = outputs.data_url(args.prefix)
    bucket, prefix = s3sync.split_s3_url(url)
    with aws_errors(f"uploading to {url}"):
        result = s3sync.upload_dir(aws.s3, args.src, bucket, prefix, dry_run=args.dry_run, files=files)
        try:
            sidecars = 0 if args.dry_run else s3sync.put_sidecars(aws.s3, args.src, bucket, prefix, indexes)
        except ValueError as e:  # a file changed between its check and its upload
            raise UsageError(f"{e}; run upload again") from None
    if args.dry_run:
        for key in result.transferred:
            print(f"would upload s3://{bucket}/{key}")
        print(result.summary("would upload") + f"; {len(skipped)} other file(s) not sent")
        return 0
    print(f"{url}: {result.summary('uploaded')}; {sidecars} trial index(es) written beside them; "
          f"{len(skipped)} other file(s) not sent")
    sessions = sorted({p.parent.name for p in files if p.name == "data_train.hdf5"})
    print(f"{len(sessions)} session(s) with data_train.hdf5; next: python -m launcher start --config FILE"
          + (f" --data-prefix {args.prefix}" if args.prefix else ""))
    return 0


def check_layout(files) -> dict:
    """Each file through the trainer's own index (trainer.data.index), before anything is sent;
    returns the indexes (path -> FileIndex), which go beside the files as sidecars."""
    from launcher.errors import UsageError
    from trainer.data.errors import DataError
    from trainer.data.index import build_index

    indexes = {}
    for path in files:
        try:
            indexes[path] = build_index(str(path), str(path))
        except DataError as e:
            raise UsageError(f"{e}: not uploaded (nothing was sent); fix or remove the file") from None
    return indexes
