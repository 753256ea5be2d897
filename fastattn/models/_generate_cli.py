"""``fastattn generate --model FOLDER "prompt"``: stream a continuation.

The prompt is tokenised with the folder's ``tokenizer.json`` (the
``tokenizers`` package), continued by :meth:`CausalLM.generate` with
``stream=True``, and the text is printed as it grows; prefill and decode
speeds go to stderr at the end.
"""
import os
import sys
import time

__all__ = ["add_parser", "run"]


def add_parser(subparsers):
    """Add the ``generate`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("generate", help="continue a prompt with a decoder checkpoint")
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--model", required=True, metavar="FOLDER",
                   help="checkpoint folder (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="sampling temperature; 0 (the default) is greedy decoding")
    p.add_argument("--top-k", type=int, default=None, metavar="K")
    p.add_argument("--top-p", type=float, default=None, metavar="P")
    p.add_argument("--seed", type=int, default=None, metavar="S")
    p.set_defaults(func=run)
    return p


def _tokenizer(Tokenizer, path):
    try:
        return Tokenizer.from_file(path)
    except Exception as e:   # tokenizers raises a plain Exception
        raise ValueError(f"{path} is not a valid tokenizers file: {e}") from None


def _err(msg):
    print(f"fastattn generate: error: {msg}", file=sys.stderr)
    return 2


def run(args, out=None, err=None):
    """Run the subcommand; returns the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - optional dependency
        return _err("the 'tokenizers' package is needed (pip install tokenizers)")
    from .auto_lm import AutoModelForCausalLM
    tok_path = os.path.join(args.model, "tokenizer.json")
    if not os.path.isfile(tok_path):
        return _err(f"{args.model!r} has no tokenizer.json")
    if args.temperature < 0:
        return _err(f"--temperature must be >= 0, got {args.temperature}")
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model)
        tk = _tokenizer(Tokenizer, tok_path)
        ids = tk.encode(args.prompt).ids
        if not ids:
            return _err("the prompt encodes to no tokens")
        sample = args.temperature > 0
        t0 = time.perf_counter()
        steps = model.generate(
            [ids], args.max_new_tokens, do_sample=sample,
            temperature=args.temperature if sample else 1.0,
            top_k=args.top_k, top_p=args.top_p, seed=args.seed, stream=True)
    except (ValueError, TypeError) as e:
        return _err(str(e))
    new, shown, t_first, n = [], "", None, 0
    eos = set(model.eos_token_id)
    for step in steps:
        if t_first is None:
            t_first = time.perf_counter()
        t = int(step[0])
        n += 1
        if t in eos:
            break
        new.append(t)
        text = tk.decode(new)
        if text.startswith(shown):      # print only what is new
            out.write(text[len(shown):])
            out.flush()
            shown = text
    t_end = time.perf_counter()
    out.write("\n")
    out.flush()
    if t_first is not None:
        pre = len(ids) / max(t_first - t0, 1e-9)
        msg = f"prefill: {len(ids)} tokens, {pre:.1f} tokens/s"
        if n > 1:
            msg += f"; decode: {n - 1} tokens, {(n - 1) / max(t_end - t_first, 1e-9):.1f} tokens/s"
        print(msg, file=err)
    return 0
