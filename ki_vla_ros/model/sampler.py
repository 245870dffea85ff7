"""ChunkSampler: `KIVLA.sample_actions` with static shapes, optionally compiled and CUDA-graph replayed.

One action chunk = one backbone pass over the prefix (-> per-layer K/V) + num_flow_steps
expert steps that reuse it. With static shapes (prompt padded to `prompt_len`, the config's
camera count, a fixed batch) both parts can be

    compile     torch.compile of the prefix pass and of one expert step ("default" or
                "max-autotune"; the 10 steps reuse one compiled step)
    cuda_graph  the whole call (prefix + 10 steps, scope "full") or only the 10-step expert
                loop (scope "expert") captured once per input shape and replayed: one launch
                instead of thousands of kernel launches. CUDA only.

Results equal `sample_actions` up to kernel-order rounding (test/model/test_sampler.py states
the tolerance on CPU fp32; benchmarks/gpu_check.py measures it in bf16 on a GPU).

Real-time chunking (a `guidance`, rtc.py) differentiates the expert at every step, which a
captured graph cannot replay: a guided call runs the prefix pass and the guided steps without
the graph (compiled when compile is on), so RTC works with every setting and is as fast as
the compiled eager path, not the graph.
"""

from __future__ import annotations

import dataclasses

import torch

from .network import KIVLA, ModelInputs
from .rtc import ChunkGuidance, guided_velocity

COMPILE_MODES = ("off", "default", "max-autotune")
GRAPH_SCOPES = ("full", "expert")


class ChunkSampler:
    """Callable (inputs, noise) -> actions [B, H, D] float32, like `model.sample_actions`."""

    def __init__(self, model: KIVLA, *, compile: str = "off", cuda_graph: bool = False,
                 graph_scope: str = "full", prompt_len: int | None = None):
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile is {compile!r}; expected one of {list(COMPILE_MODES)}")
        self.model = model
        self.config = model.config
        self.compile = compile
        self.cuda_graph = False
        self.graph_scope = graph_scope
        self._graphs: dict[tuple, _CapturedCall] = {}
        if cuda_graph:
            self.enable_cuda_graph(graph_scope)
        self.prompt_len = prompt_len or model.config.max_token_len
        self._prefix_kv, self._expert_step = model._prefix_kv, model._run_expert
        if compile != "off":
            # torch.compile's own "max-autotune" also records CUDA graphs; ours are captured below.
            mode = "max-autotune-no-cudagraphs" if compile == "max-autotune" else None
            self._prefix_kv = torch.compile(model._prefix_kv, mode=mode, dynamic=False)
            self._expert_step = torch.compile(model._run_expert, mode=mode, dynamic=False)

    def enable_cuda_graph(self, scope: str = "full") -> None:
        """From the next call on, capture (once per input shape) and replay a CUDA graph of `scope`."""
        if scope not in GRAPH_SCOPES:
            raise ValueError(f"graph_scope is {scope!r}; expected one of {list(GRAPH_SCOPES)}")
        if self.model.device.type != "cuda":
            raise ValueError(f"cuda_graph is true but the model is on {self.model.device}; CUDA graphs need a "
                             f"CUDA device (set cuda_graph: false, or device: cuda)")
        self.cuda_graph, self.graph_scope = True, scope
        self._graphs = {}

    def pad_prompt(self, inputs: ModelInputs) -> ModelInputs:
        """Right-pad tokens [B, L] to [B, prompt_len] (padding is masked: the actions do not change)."""
        b, length = inputs.tokens.shape
        if length > self.prompt_len:
            raise ValueError(f"prompt is {length} tokens; the sampler pads to prompt_len={self.prompt_len} "
                             f"(raise max_token_len or shorten the task text)")
        extra = self.prompt_len - length
        return dataclasses.replace(
            inputs, tokens=torch.nn.functional.pad(inputs.tokens, (0, extra), value=0),
            token_masks=torch.nn.functional.pad(inputs.token_masks.bool(), (0, extra), value=False))

    @torch.no_grad()
    def __call__(self, inputs: ModelInputs, noise: torch.Tensor | None = None,
                 guidance: ChunkGuidance | None = None) -> torch.Tensor:
        c, dev = self.config, self.model.device
        inputs = self.pad_prompt(inputs.to(dev))
        b = inputs.batch_size
        if noise is None:
            noise = torch.randn(b, c.action_horizon, c.action_dim, device=dev)
        if tuple(noise.shape) != (b, c.action_horizon, c.action_dim):
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected [B, H, D] = "
                             f"{(b, c.action_horizon, c.action_dim)}")
        noise = noise.to(dev, torch.float32)
        if guidance is not None:  # RTC: never through the graph (module doc)
            guidance.check((b, c.action_horizon, c.action_dim))
            return guidance.freeze_prefix(self.flow(inputs, noise, guidance))
        if not self.cuda_graph:
            return self.flow(inputs, noise)
        key = (tuple(inputs.images.shape), tuple(inputs.tokens.shape))
        if key not in self._graphs:
            self._graphs[key] = _CapturedCall(self, inputs, noise)
        return self._graphs[key].replay(inputs, noise)

    def flow(self, inputs: ModelInputs, noise: torch.Tensor, guidance: ChunkGuidance | None = None) -> torch.Tensor:
        """Prefix pass, then the Euler steps from t = 1 to 0 -> actions [B, H, D] float32."""
        kv, pad = self._prefix_kv(inputs)
        return self.denoise(noise, kv, self.model._expert_context(pad, self.config.action_horizon), guidance)

    def denoise(self, x: torch.Tensor, kv, context, guidance: ChunkGuidance | None = None) -> torch.Tensor:
        """num_flow_steps expert steps over the prefix K/V: noise x [B, H, D] -> actions [B, H, D]
        (guided toward the running chunk when `guidance` is given: rtc.py)."""
        n = self.config.num_flow_steps
        dt = -1.0 / n
        weights = None if guidance is None else guidance.weights(x.shape[1], x.device)
        for step in range(n):
            time = torch.full((x.shape[0],), 1.0 + step * dt, device=x.device)
            if guidance is None:
                x = x + dt * self._expert_step(x, time, kv, context)
            else:
                x = x + dt * guided_velocity(lambda x_in: self._expert_step(x_in, time, kv, context), x,
                                             1.0 + step * dt, guidance, weights)
        return x


class _CapturedCall:
    """One CUDA graph of the sampler for one input shape: static input buffers, captured outputs."""

    def __init__(self, sampler: ChunkSampler, inputs: ModelInputs, noise: torch.Tensor, warmup: int = 2):
        self.sampler = sampler
        self.inputs = ModelInputs(**{f.name: getattr(inputs, f.name).clone() for f in dataclasses.fields(ModelInputs)})
        self.noise = noise.clone()
        full = sampler.graph_scope == "full"
        if not full:  # expert loop only: the prefix outputs become static buffers the graph reads
            kv, pad = sampler._prefix_kv(self.inputs)
            self.kv = [(k.clone(), v.clone()) for k, v in kv]
            self.context = tuple(t.clone() for t in sampler.model._expert_context(pad, sampler.config.action_horizon))
        body = (lambda: sampler.flow(self.inputs, self.noise)) if full else \
            (lambda: sampler.denoise(self.noise, self.kv, self.context))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (compile, cuBLAS workspaces) outside the capture
            for _ in range(warmup):
                body()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = body()

    def replay(self, inputs: ModelInputs, noise: torch.Tensor) -> torch.Tensor:
        for f in dataclasses.fields(ModelInputs):
            getattr(self.inputs, f.name).copy_(getattr(inputs, f.name))
        self.noise.copy_(noise)
        if self.sampler.graph_scope == "expert":
            kv, pad = self.sampler._prefix_kv(self.inputs)
            for (k_buf, v_buf), (k, v) in zip(self.kv, kv):
                k_buf.copy_(k)
                v_buf.copy_(v)
            for buf, t in zip(self.context, self.sampler.model._expert_context(pad, self.sampler.config.action_horizon)):
                buf.copy_(t)
        self.graph.replay()
        return self.out.clone()
