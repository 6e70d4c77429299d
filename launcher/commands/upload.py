"""`upload SRC`: sync local session folders to the data bucket (replaces `aws s3 sync`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_aws_args, command_parser, connect

EXAMPLES = """
python -m launcher upload ~/data/hdf5_data_final                       # → s3://<data bucket>/data/<session>/...
python -m launcher upload ~/data/hdf5_data_diphone_encoded --prefix diphone
python -m launcher start --config rnn_args_diphone.yaml --data-prefix diphone
python -m launcher upload ~/data/hdf5_data_final --dry-run
"""


def add_parser(sub) -> None:
    p = command_parser(
        sub, "upload", "sync local session folders to the data bucket", EXAMPLES,
        "Upload SRC/<session>/data_*.hdf5 to the stack's data bucket under its data prefix, skipping files "
        "already there unchanged (same size and MD5), in parallel multipart transfers with a progress bar",
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
    if not any(args.src.glob("*/*.hdf5")):
        raise UsageError(f"{args.src} holds no <session>/*.hdf5 files")
    aws, outputs = connect(args)
    url = outputs.data_url(args.prefix)
    bucket, prefix = s3sync.split_s3_url(url)
    with aws_errors(f"uploading to {url}"):
        result = s3sync.upload_dir(aws.s3, args.src, bucket, prefix, dry_run=args.dry_run)
    if args.dry_run:
        for key in result.transferred:
            print(f"would upload s3://{bucket}/{key}")
        print(result.summary("would upload"))
        return 0
    print(f"{url}: {result.summary('uploaded')}")
    sessions = sorted({p.parent.name for p in args.src.glob('*/data_train.hdf5')})
    print(f"{len(sessions)} session(s) with data_train.hdf5; next: python -m launcher start --config FILE"
          + (f" --data-prefix {args.prefix}" if args.prefix else ""))
    return 0
