"""The layout settings' own checks, run when the config is read (SimPOConfig.__post_init__): combinations no layout
can run, each naming its keys. What needs the model (which families prefix sharing is exact for) or the device
(FlexAttention's backward) is checked when the layout is chosen (simpo/train/layouts/__init__.py)."""


def layout_problems(args) -> list[str]:
    """`args`: a SimPOConfig (prefix_sharing, padding_free, flex_attention, max_tokens_per_row)."""
    problems = []
    if args.padding_free is True and args.prefix_sharing is False:
        problems.append("padding_free packs prefix-shared pairs: it needs prefix_sharing true or auto.")
    if args.flex_attention is True and args.prefix_sharing is False:
        problems.append("flex_attention masks prefix-shared rows: it needs prefix_sharing true or auto.")
    if args.max_tokens_per_row is not None and not (args.padding_free is True and args.max_tokens_per_row > 0):
        problems.append(
            f"max_tokens_per_row={args.max_tokens_per_row} sizes the rows padding_free packs: it needs"
            " padding_free: true and a positive number of tokens."
        )
    return problems
