"""TransformerLens' surface: its names and helpers (``utils``), config (``config``), weight layout
(``weights``), QK / OV circuits (``factored``), residual-stream tools (``residual``) and activation
patching by TL's function names (``patching``)."""
