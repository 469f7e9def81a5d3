"""TransformerLens' surface: its names and helpers (``utils``), config (``config``), weight layout
(``weights``), QK / OV circuits (``factored``) and residual-stream tools (``residual``)."""
