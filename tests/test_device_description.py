"""What the report and the benchmarks say they were measured on."""

from jaxarch.report.device import cpu_model

GENOA = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n" * 2


def test_cpu_model_names_the_family_and_model_a_generic_name_hides():
    assert cpu_model(GENOA) == "AMD EPYC, family 25, model 17"


def test_cpu_model_without_family_numbers_is_the_name():
    assert cpu_model("model name\t: Apple M2\n") == "Apple M2"

