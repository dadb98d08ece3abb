"""Scheduled retries of emails that failed transiently: the policy (`policy`), the retry
record's format (`item`), one attempt and its fate (`retrier`), and the scheduler that
runs due items from the retry topics (`scheduler`, with its progress per partition in
`progress` and `offsets`); its aiokafka binding is service/kafka/retries.py."""
