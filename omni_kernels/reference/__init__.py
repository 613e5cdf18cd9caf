"""Plain-torch references, written from the math (explicit softmax, dense masks, fp32), one per
kernel and named like it. Slow on purpose: they are the ground truth the tests compare against."""
