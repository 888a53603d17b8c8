"""Torch-Pruning 1.6.1 on small transformers models, each in its own process with a time limit:
does it finish, and does the pruned model run its own forward? Our library on the same models is
covered by tests/test_transformers.py (oracle, parity, reload).

    .venv/bin/python bench/anchor_transformers.py [seconds per model, default 90]
"""

from __future__ import annotations

import subprocess
import sys

MODELS = {
    "llama (MHA 8/8)": "T.LlamaForCausalLM(T.LlamaConfig(vocab_size=128, hidden_size=256, "
    "intermediate_size=512, num_hidden_layers=4, num_attention_heads=8, "
    "num_key_value_heads=8))",
    "llama (GQA 8/2)": "T.LlamaForCausalLM(T.LlamaConfig(vocab_size=128, hidden_size=256, "
    "intermediate_size=512, num_hidden_layers=4, num_attention_heads=8, "
    "num_key_value_heads=2))",
    "gpt2": "T.GPT2LMHeadModel(T.GPT2Config(vocab_size=128, n_embd=256, n_layer=4, n_head=8))",
    "bert": "T.BertForMaskedLM(T.BertConfig(vocab_size=128, hidden_size=256, "
    "intermediate_size=512, num_hidden_layers=4, num_attention_heads=8))",
}

RUN = """
import time, warnings, torch, torch_pruning as tp, transformers as T
warnings.filterwarnings("ignore")
m = {model}.eval()
ids = torch.randint(0, 128, (1, 16))
head = m.lm_head if hasattr(m, "lm_head") else m.cls
t = time.perf_counter()
try:
    tp.pruner.MetaPruner(m, {{"input_ids": ids}}, importance=tp.importance.MagnitudeImportance(p=2),
                         pruning_ratio=0.5, output_transform=lambda o: o.logits,
                         ignored_layers=[head]).step()
except Exception as e:
    print(f"crashes after {{time.perf_counter() - t:.2f}} s ({{type(e).__name__}})")
else:
    dt = time.perf_counter() - t
    try:
        m(ids)
        print(f"finishes in {{dt:.2f}} s; the pruned model runs")
    except Exception as e:
        print(f"finishes in {{dt:.2f}} s; its pruned model fails ({{type(e).__name__}})")
"""


def main() -> None:
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else 90.0
    print("| model | Torch-Pruning 1.6.1, ratio 0.5 |\n|---|---|")
    for name, model in MODELS.items():
        try:
            out = (
                subprocess.run(
                    [sys.executable, "-c", RUN.format(model=model)],
                    timeout=limit,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()
            )
            verdict = out[-1] if out else "no output"
        except subprocess.TimeoutExpired:
            verdict = f"does not finish in {limit:.0f} s"
        print(f"| {name} | {verdict} |")


if __name__ == "__main__":
    main()
