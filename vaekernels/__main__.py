"""Command line: ``python -m vaekernels demo | encode | decode | roundtrip [options]`` (``--help`` on each)."""
import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m vaekernels")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="compare a fast VAE with its plain PyTorch reference on a synthetic clip")
    d.add_argument("--model", choices=["wan2.1", "wan2.2"],
                   help="the released configuration of this VAE with random weights (implies --random)")
    d.add_argument("--random", action="store_true",
                   help="random weights of the released configuration (--model, default wan2.1): the old demo, at "
                        "full size, whose output is noise")
    d.add_argument("--weights", help="path to Wan2.1_VAE.pth / Wan2.2_VAE.pth or .safetensors; the model is read "
                                     "from it (default: the small trained Wan2.1-architecture model shipped with "
                                     "the package)")
    d.add_argument("--frames", type=int, default=17)
    d.add_argument("--height", type=int, default=128)
    d.add_argument("--width", type=int, default=128)
    d.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    d.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    d.add_argument("--seed", type=int, default=0, help="draws the clip and the random weights")
    d.add_argument("--out", default="demo_out", help="folder for strip.png")
    from . import cli
    cli.add_arguments(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import demo
            demo(args)
        else:
            cli.COMMANDS[args.command](args)
    except (ValueError, TypeError, ImportError) as e:  # bad arguments, files or set-up: a message, not a traceback
        parser.exit(2, f"error: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted: no partial output was left\n")


if __name__ == "__main__":
    main()
