"""Pictures: sample grids (vaelab.plots.images) and training graphs (vaelab.plots.graphs).

Importing this package, or either module, imports no matplotlib and leaves the backend alone;
the drawing code loads what it needs when it runs.
"""
