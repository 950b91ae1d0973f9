"""Push a pruned checkpoint folder (with its recipe and model card) to the Hugging Face Hub.

    python examples/push_to_hub.py outputs/SmolLM2-135M-Instruct-wanda-si-50 your-name/SmolLM2-135M-wanda-si-50
    python examples/push_to_hub.py <folder> <repo> --dry-run     # list what would be uploaded, no network

Authentication: `huggingface-cli login` (or `hf auth login`) once, or pass --token.
"""

from __future__ import annotations

import argparse
import os

from optimum_si import SIPruner


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    files = sorted(os.listdir(args.folder))
    if not os.path.isfile(os.path.join(args.folder, "si_config.json")):
        parser.error(f"{args.folder} is not an optimum-si checkpoint (no si_config.json)")
    if args.dry_run:
        print(f"would upload {len(files)} files to {args.repo_id}: {', '.join(files)}")
        return files
    url = SIPruner.push_to_hub(args.folder, args.repo_id, private=args.private or None, token=args.token)
    print(f"pushed: {url}")
    return files


if __name__ == "__main__":
    main()
