"""FFT plumbing: cached FFTW plans (plans), FFTW wisdom and the planner lock (wisdom), the bound on
planned shapes (budget), background planning (background) and fast transform lengths (sizes).
Imports nothing of the engine but its root modules (config, resources); never signal or layers."""
