"""The knowledge: artifacts loaded, validated (FHIR R4B models, strict FHIRPath) and
compiled once; value sets expanded into indexed lookups; prefetch templates built.

Public API:
    load(directories, base) -> KnowledgeBase   raises KnowledgeError (file, id, element, message)
    settle(kb=None)                            freeze what is loaded out of the garbage collector,
                                               and raise its young threshold to YOUNG_THRESHOLD
    KnowledgeBase    .services, .plans, .terminology, .fingerprint, .files, .service_for(...)
    KINDS            the resource types a knowledge directory may hold
    Plan, Service, CardAction, Citation, SuggestionAction, ActivityDefinition, Condition, Variable,
    DataRequirement, CodeFilter, DateFilter, Artifact         the compiled model
    Terminology, ExpandedValueSet, NDC, ndc_product            value sets and codes; Terminology.unit_map
                                               (the unit ConceptMaps) and .result_text_system (result strings)
    resolve_template, check_template, build_template, TemplateError   prefetch templates
    INDICATOR, INDICATOR_RANK   priority -> card indicator, and the indicators' order
    RECOMMENDATIONS_KEY  the card extension key listing the recommendation codes it reports
    PATIENT_PARAM    the search parameter that names the patient
    MEDICATION_RECORD_TYPES   records whose medication[x] may be a reference
    path_problem(kind, path), element_path_segments(path)   dynamicValue element paths
    catalogue_*, terminology_*, render_readme, readme_is_fresh, entries, counts   the catalogue
    gate_status(kb, accept), gate_text, GateStatus, GateItem, EXT_GO_LIVE   the go-live gate
    unarmed(plans), unarmed_text(rows), Unarmed   rules not armed (D-11), settled at load
"""

from cds_service.knowledge._arming import Unarmed, unarmed, unarmed_text
from cds_service.knowledge._catalogue import (
    catalogue_html,
    catalogue_markdown,
    catalogue_table_html,
    counts,
    entries,
    readme_is_fresh,
    render_readme,
    terminology_check_text,
    terminology_markdown,
    terminology_status,
)
from cds_service.knowledge._golive import EXT_GO_LIVE, GateItem, GateStatus, gate_status, gate_text
from cds_service.knowledge._load import KINDS, YOUNG_THRESHOLD, KnowledgeBase, load, settle
from cds_service.knowledge._model import (
    INDICATOR,
    INDICATOR_RANK,
    MEDICATION_RECORD_TYPES,
    RECOMMENDATIONS_KEY,
    ActivityDefinition,
    Artifact,
    CardAction,
    Citation,
    CodeFilter,
    Condition,
    DataRequirement,
    DateFilter,
    Plan,
    Service,
    SuggestionAction,
    Suppression,
    Variable,
)
from cds_service.knowledge._paths import path_problem
from cds_service.knowledge._paths import segments as element_path_segments
from cds_service.knowledge._search_params import PATIENT_PARAM
from cds_service.knowledge._templates import (
    TemplateError,
    build_template,
    check_template,
)
from cds_service.knowledge._templates import resolve as resolve_template
from cds_service.knowledge._terminology import (
    NDC,
    ExpandedValueSet,
    Terminology,
    ndc_product,
)

__all__ = [
    "EXT_GO_LIVE", "GateItem", "GateStatus", "gate_status", "gate_text", "Unarmed", "unarmed", "unarmed_text",
    "INDICATOR", "INDICATOR_RANK", "MEDICATION_RECORD_TYPES", "RECOMMENDATIONS_KEY",
    "KINDS", "NDC", "PATIENT_PARAM", "ActivityDefinition", "Artifact", "CardAction", "Suppression", "Citation", "CodeFilter", "Condition",
    "DataRequirement", "DateFilter", "ExpandedValueSet", "KnowledgeBase", "Plan", "Service", "SuggestionAction",
    "TemplateError", "Terminology", "Variable", "build_template", "catalogue_html", "catalogue_markdown",
    "catalogue_table_html", "check_template", "counts", "element_path_segments", "entries", "load", "ndc_product", "path_problem", "readme_is_fresh",
    "render_readme", "resolve_template", "settle", "YOUNG_THRESHOLD", "terminology_check_text", "terminology_markdown",
    "terminology_status",
]
