// Versions the op library was built against (set by setup.py).
#pragma once

#ifndef DEPGRAPH_TORCH_VERSION
#define DEPGRAPH_TORCH_VERSION "unknown"
#endif
#ifndef DEPGRAPH_CUDA_VERSION
#define DEPGRAPH_CUDA_VERSION "unknown"
#endif
