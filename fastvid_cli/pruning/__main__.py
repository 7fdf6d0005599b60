"""`python -m fastvid_cli.pruning`: the README's tables of pruning methods and method options, from the registry."""

from fastvid_cli.pruning.docs import methods_table, options_table

print("\n".join(methods_table()))
print()
print("\n".join(options_table()))
