"""Report: paper-layout tables, figures, published numbers, statistics over seeds, the runs listing.

Stage 5 of the DAG (rules ``table``, ``figures``, ``stats``): reads the files evaluation wrote.
"""
