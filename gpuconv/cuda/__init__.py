"""gpuconv's CUDA path: our own kernels (kernels/*.cu) compiled by NVRTC through CuPy.

Modules, one concern each:

* ``registry`` -- the one definition of every kernel variant (name, template arguments, block, shared
  memory, dtypes, compute capability, where it applies);
* ``loader`` -- assemble a variant's compilation unit from its file and the registry, compile it (CuPy
  on a GPU, NVRTC from cuda-bindings for any architecture without one);
* ``plan`` -- choose what to launch: a pure function of pass, geometry, dtype, ``algo`` and free memory;
* ``conv``, ``pool`` -- run plans on a backend; ``backend`` -- the CuPy backend;
* ``autotune`` -- time the candidates of ``algo="auto"`` once per shape and cache the winner;
* ``report`` -- the static kernel report (``python -m gpuconv.cuda.report``); ``info`` -- ``gpuconv info``.

Importing this package needs neither CuPy nor a GPU; running a plan on the CuPy backend does.
"""
