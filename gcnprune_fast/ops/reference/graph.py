# PLACEHOLDER (being written): cosine_similarity, knn_graph
def cosine_similarity(f, center=False):
    raise NotImplementedError
def knn_graph(f, k, segments=None, center=False):
    raise NotImplementedError
