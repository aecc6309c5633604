"""Talking to a Kubernetes API server: the connection a kubeconfig describes (`api`), list then
watch of one kind of object (`watch`), and ServiceAccount tokens checked by TokenReview
(`tokenreview`).

Built on lightkube (`pip install meshcore[kubernetes]`), imported only when one of these is used:
its kubeconfig loading, authentication and TLS, and its typed models. The list/watch loop is our
own, because lightkube's watch neither asks for bookmarks nor decodes them (a BOOKMARK carries
only metadata, and its typed EndpointSlice requires `addressType`).
"""
