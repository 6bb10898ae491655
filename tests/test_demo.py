"""The README's main job (scripts/demo.sh): convert -> preprocess -> finetune -> chat on a tiny model."""
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_memorises_the_sample_and_answers_with_it():
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh")], capture_output=True, text=True,
                            timeout=600, check=False)
    out = result.stdout
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final_loss = float(out.split("done: steps 0->200, loss ")[1].split("->")[1].split(";")[0])
    assert final_loss < 0.05
    # the trained answer of the sample question, reproduced by greedy decoding through the KV cache
    assert "生抽颜色浅、味道咸鲜，用于调味；老抽颜色深，用于上色。" in out.split("== 6.")[1]
    assert os.path.getsize(os.path.join(REPO, "runs", "demo", "loss.png")) > 1000
