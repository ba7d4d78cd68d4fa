"""Unit tests compare scores across batchings and code paths to 1e-5, which holds in float32 only, so automatic
precision stays float32 on CPUs with native bf16 too; tests of the bf16 path turn it back on."""

import os

from lref.device import CPU_BF16_VARIABLE

os.environ[CPU_BF16_VARIABLE] = "0"
