"""FFT plumbing: cached FFTW plans and wisdom, the bound on planned shapes, background planning and
fast transform lengths. Imports nothing else of the engine except its errors and resources."""
