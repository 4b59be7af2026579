-- Item profiles sample an item's reviews (Amazon): read them by item.
CREATE INDEX interactions_reviews_by_item ON interactions (dataset_id, item_id) WHERE review IS NOT NULL;
