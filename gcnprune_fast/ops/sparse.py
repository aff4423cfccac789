# PLACEHOLDER (being written): gcn_norm, spmm
def gcn_norm(graph, add_self_loops=True):
    raise NotImplementedError
def spmm(graph, x):
    raise NotImplementedError
