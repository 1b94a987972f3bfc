"""Stage 1 of the pipeline: a model (or one dynamo graph) -> an aten inference graph.

* :mod:`.tracers`: :func:`capture_model`, the whole model as one graph with symbolic ``B``, ``L``;
* :mod:`.aot`: :func:`capture_aten_graph`, the adapter for the graphs the backend receives;
* :mod:`.symbolic`: sizes as sympy, sizes read from the input, the scoped ``bit_length`` patch;
* :mod:`.helpers`: the scoped routing of ``opt_einsum.contract`` to ``torch.einsum``;
* :mod:`.outputs`: the output structure (:class:`OutSpec`) and the one logits finder;
* :mod:`.inputs`: the capture input and the one probe-input function;
* :mod:`.source`: the one source-attribution function (``file:line`` of the user's code).
"""

from .aot import capture_aten_graph
from .helpers import routed_contract
from .inputs import capture_input, input_kind_of, probe_input, unwrap_model
from .outputs import OutSpec, find_logits, flatten_output
from .source import op_name, user_code, user_source
from .tracers import Captured, capture_model

__all__ = ["Captured", "OutSpec", "capture_aten_graph", "capture_input", "capture_model", "find_logits",
           "flatten_output", "input_kind_of", "op_name", "probe_input", "routed_contract", "unwrap_model",
           "user_code", "user_source"]
