"""The paper broker: Kite Connect v3 on localhost, for the demo and the tests (docs/paper-broker.md).

- `testing.PaperBrokerServer`: run it inside this process; `__main__`: the `paper-broker` command.
- `control.SimControl` / `AsyncSimControl`: drive its control API (prices, fills, faults, request log).
- `app.create_app`: the ASGI app; `simulator.Simulator` holds its state, `exchange.PaperExchange`
  the accounts, order book and fills, `kite_api` and `control_api` the HTTP routes.
"""
