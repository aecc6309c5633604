def on_request(req):
    req.headers["x-plugin"] = "1"
