"""The README's main job (scripts/demo.sh): convert -> preprocess -> perplexity -> finetune -> perplexity -> chat on a
tiny model."""
import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "runs", "demo")


def test_demo_memorises_the_sample_and_answers_with_it():
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh")], capture_output=True, text=True,
                            timeout=600, check=False)
    out = result.stdout
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final_loss = float(out.split("done: steps 0->200, loss ")[1].split("->")[1].split(";")[0])
    assert final_loss < 0.05
    # perplexity of the sample answers: ~ the vocabulary size for the random model, ~ exp(final loss) once memorised
    before, after = (json.load(open(os.path.join(DEMO, name), encoding="utf-8"))
                     for name in ("ppl_before.json", "ppl_after.json"))
    assert before["tokens_scored"] == after["tokens_scored"] > 300 and before["documents"] == 30
    assert after["answers_only"]
    assert before["perplexity"] > 100 and after["perplexity"] < 1.2, (before["perplexity"], after["perplexity"])
    assert f"perplexity {before['perplexity']:.4f}" in out.split("== 5.")[1].split("== 6.")[0]
    assert f"perplexity {after['perplexity']:.4f}" in out.split("== 7.")[1].split("== 8.")[0]
    # the trained answer of the sample question, reproduced by greedy decoding through the KV cache
    assert "生抽颜色浅、味道咸鲜，用于调味；老抽颜色深，用于上色。" in out.split("== 8.")[1]
    assert os.path.getsize(os.path.join(DEMO, "loss.png")) > 1000
