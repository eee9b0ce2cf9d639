"""`python -m t5pod <command>` and the `t5pod` console script."""

import argparse
import sys


def _convert_hf(args) -> int:
    from t5pod import hf_import

    config = hf_import.convert(args.src_dir, args.out_dir)
    print(f"Converted {args.src_dir} -> {args.out_dir}")
    print(f"  model: d_model={config.d_model} layers={config.num_layers}/{config.decoder_layers} "
          f"heads={config.num_heads} feed_forward_proj={config.feed_forward_proj} "
          f"tie_word_embeddings={config.tie_word_embeddings}")
    print(f"  use it with: --gin_file={args.out_dir}/model.gin --gin.CHECKPOINT_PATH=\"'{args.out_dir}'\"")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t5pod", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert-hf", help="Import a Hugging Face T5 checkpoint folder (config.json + safetensors).")
    convert.add_argument("src_dir", metavar="SRC_DIR", help="folder with config.json and model.safetensors")
    convert.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the Orbax checkpoint and model.gin")
    convert.set_defaults(run=_convert_hf)
    return parser


# Errors a user can fix from the message alone: printed as one line, no traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from t5pod.checkpoints import CheckpointError
    from t5pod.hf_import import ConversionError

    return (ConversionError, CheckpointError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _user_errors() as error:
        print(f"t5pod {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
