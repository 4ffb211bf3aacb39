"""``python -m evaluator INPUT OUTPUT`` or ``--submit_dir D --truth_dir D --output_dir D``."""

from evaluator.evaluate import main

raise SystemExit(main())
