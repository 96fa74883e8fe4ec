"""Alert and recording rules on log queries: rules, evaluation, state, notifications, backtests."""
