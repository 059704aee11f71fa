"""FHIRPath for the knowledge artifacts: strict parse at load, compiled evaluation per
request, the added functions, FHIR data helpers and UCUM units.

The only package that imports fhirpathpy, antlr4 and the UCUM library (ucumvert).

Public API:
    parse(source) -> Expression          strict parse (FhirPathSyntaxError), compiled once
    Evaluator(scope, root).run(expr, env) evaluate (EvaluationError), fhirpathpy R4 model
    Scope, Environment                    per-request functions' state; lazy %variables
    TerminologyLike                       what memberOf()/display()/resultReading() need of the terminology
    UnitMap(aliases, displays)            unit aliases (local string -> UCUM) and displays (UCUM -> text);
                                          .to_ucum(unit) -> str, .display(code) -> str | None
    plain(value), fhir_date, fhir_datetime  JSON-friendly results; FHIRPath date literals
    KNOWN_FUNCTIONS                       every function an expression may call
    set_compiled(on)                      compiled closures or fhirpathpy's interpreter
    install_speedups(), uninstall_speedups()  fhirpathpy patches (version-checked)
    convert, conversion_factor, check_unit, warm_up, UnitError   UCUM conversion (failures cached too)
    unit_parse_count() -> int             UCUM parses so far in this process (a warm call adds none)
    codings, element_values, path_codings, first_date, parse_date, subject_reference, reference_of
                                          reading FHIR JSON (choice types, references)
"""

from cds_service.fhirpath._expression import (
    KNOWN_FUNCTIONS,
    Environment,
    EvaluationError,
    Evaluator,
    Expression,
    FhirPathSyntaxError,
    Scope,
    fhir_date,
    fhir_datetime,
    parse,
    plain,
    set_compiled,
)
from cds_service.fhirpath._protocols import TerminologyLike
from cds_service.fhirpath._resources import (
    codings,
    element_values,
    first_date,
    parse_date,
    path_codings,
    reference_of,
    subject_reference,
)
from cds_service.fhirpath._speedups import install as install_speedups
from cds_service.fhirpath._speedups import uninstall as uninstall_speedups
from cds_service.fhirpath._unit_map import UnitMap
from cds_service.fhirpath._units import (
    UnitError,
    check_unit,
    conversion_factor,
    convert,
    unit_parse_count,
    warm_up,
)

__all__ = [
    "KNOWN_FUNCTIONS", "Environment", "EvaluationError", "Evaluator", "Expression",
    "FhirPathSyntaxError", "Scope", "TerminologyLike", "UnitError", "UnitMap", "check_unit", "codings",
    "conversion_factor", "convert", "element_values", "fhir_date", "fhir_datetime", "first_date", "path_codings",
    "install_speedups", "parse", "parse_date", "plain", "reference_of", "set_compiled",
    "subject_reference", "uninstall_speedups", "unit_parse_count", "warm_up",
]
