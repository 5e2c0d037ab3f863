"""link_modules (compiler/seq2seq/link.py) and ranged.link, Before/Expected: the `main` of each graph's module
becomes one function of a single module, named (and exported, `global_symbol`) after its entry point or bucket;
the functions themselves are unchanged. A module with other functions is refused."""

import pytest
import tvm
from tvm.script import ir as I, relax as R

from compiler import ranged
from compiler.errors import IntformerError
from compiler.seq2seq.link import link_modules


def _graph(scale):
    @I.ir_module
    class Graph:
        @R.function
        def main(x: R.Tensor((2, 4), "int8")):
            with R.dataflow():
                y = R.multiply(R.astype(x, "int32"), R.const(scale, "int32"))
                R.output(y)
            return y

    return Graph


@I.ir_module
class Expected:
    @R.function
    def encoder(x: R.Tensor((2, 4), "int8")):
        R.func_attr({"global_symbol": "encoder"})
        with R.dataflow():
            y = R.multiply(R.astype(x, "int32"), R.const(2, "int32"))
            R.output(y)
        return y

    @R.function
    def decoder(x: R.Tensor((2, 4), "int8")):
        R.func_attr({"global_symbol": "decoder"})
        with R.dataflow():
            y = R.multiply(R.astype(x, "int32"), R.const(3, "int32"))
            R.output(y)
        return y


@pytest.mark.parametrize("link", [link_modules, ranged.link], ids=["seq2seq", "ranged"])
def test_each_main_becomes_the_function_of_its_name(link):
    got = link({"encoder": _graph(2), "decoder": _graph(3)})
    tvm.ir.assert_structural_equal(got, Expected)


@pytest.mark.parametrize("link", [link_modules, ranged.link], ids=["seq2seq", "ranged"])
def test_a_module_with_other_functions_is_refused(link):
    mod = _graph(2)
    mod["helper"] = mod["main"]
    with pytest.raises(IntformerError, match="helper"):
        link({"encoder": mod})
