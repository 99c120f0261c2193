"""Report: paper-layout tables, figures, published numbers, statistics over seeds, the runs listing.

Stage 5 of the DAG (rules ``tables``, ``plot_*``, ``expression_types``, ``stats``): reads the files evaluation
wrote. Tables: :mod:`~ris.report.spec` (what a table is; light, the Snakefile imports it) ->
:mod:`~ris.report.build` (its numbers as one long frame) -> :mod:`~ris.report.layout` ->
:mod:`~ris.report.render` (CSV, Markdown, LaTeX, HTML). Figures: :mod:`~ris.report.curves` and
:mod:`~ris.report.grids` over :mod:`~ris.report.canvas`. Also :mod:`~ris.report.breakdown` (per expression
type), :mod:`~ris.report.job_costs` (time and memory per rule), :mod:`~ris.report.published`, :mod:`~ris.report.stats`,
:mod:`~ris.report.runs`.
"""
