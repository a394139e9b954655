"""marketing.segment_summary: a product built in Python and published through the same gate."""

import pyarrow as pa
import pyarrow.compute as pc

from mesh_platform.products.python import ProductContext, python_product


@python_product("segment_summary.yml", inputs=["marketing.customer_segments"])
def segment_summary(ctx: ProductContext) -> pa.Table:
    segments = ctx.read("marketing.customer_segments")
    revenue = segments["lifetime_revenue"].cast(pa.float64())
    grouped = (
        segments.set_column(
            segments.schema.get_field_index("lifetime_revenue"), "lifetime_revenue", revenue
        )
        .group_by(["market_segment", "value_tier"])
        .aggregate([("customer_key", "count"), ("lifetime_revenue", "sum")])
        .sort_by([("market_segment", "ascending"), ("value_tier", "ascending")])
    )
    customers = grouped["customer_key_count"]
    total = grouped["lifetime_revenue_sum"]
    grand_total = pc.sum(revenue).as_py() or 1.0
    return pa.table(
        {
            "market_segment": grouped["market_segment"],
            "value_tier": grouped["value_tier"],
            "customers": customers,
            "total_revenue": total,
            "average_revenue": pc.divide(total, pc.cast(customers, pa.float64())),
            "revenue_share": pc.divide(total, grand_total),
        }
    )
