"""LogQL, the query language of Grafana Loki: lexer, parser, AST, printer and template subset.

It knows nothing of DuckDB; the Loki-compatible API compiles the AST.
"""

from query.logql.ast import (
    BinaryOp,
    BytesFilter,
    Decolorize,
    DropLabels,
    DurationFilter,
    Expr,
    Extraction,
    Grouping,
    Ip,
    IpFilter,
    JsonParser,
    KeepLabels,
    LabelAnd,
    LabelFilter,
    LabelFormat,
    LabelFormatItem,
    LabelOr,
    LabelPredicate,
    LabelReplace,
    LineFilter,
    LineFormat,
    LogfmtParser,
    LogQLUnsupported,
    LogQuery,
    LogRange,
    Matcher,
    MetricExpr,
    Number,
    NumericFilter,
    PatternParser,
    RangeAggregation,
    RegexpParser,
    Selector,
    Stage,
    UnpackParser,
    Unwrap,
    Vector,
    VectorAggregation,
    VectorMatching,
    is_log_query,
    is_metric_query,
    is_scalar,
    log_queries,
    walk,
)
from query.logql.parser import parse, pattern_parts
from query.logql.printer import to_string
from query.logql.template import compile_template, render

__all__ = [
    "BinaryOp", "BytesFilter", "Decolorize", "DropLabels", "DurationFilter", "Expr", "Extraction", "Grouping", "Ip",
    "IpFilter", "JsonParser", "KeepLabels", "LabelAnd", "LabelFilter", "LabelFormat", "LabelFormatItem", "LabelOr",
    "LabelPredicate", "LabelReplace", "LineFilter", "LineFormat", "LogQLUnsupported", "LogQuery", "LogRange",
    "LogfmtParser", "Matcher", "MetricExpr", "Number", "NumericFilter", "PatternParser", "RangeAggregation",
    "RegexpParser", "Selector", "Stage", "UnpackParser", "Unwrap", "Vector", "VectorAggregation", "VectorMatching",
    "compile_template", "is_log_query", "is_metric_query", "is_scalar", "log_queries", "parse", "pattern_parts",
    "render", "to_string", "walk",
]
